// OHIF v3 reading Orthanc's DICOMweb through the same origin (nginx.conf proxies /dicom-web and /wado).
window.config = {
  routerBasename: "/",
  showStudyList: true,
  extensions: [],
  modes: [],
  dataSources: [
    {
      namespace: "@ohif/extension-default.dataSourcesModule.dicomweb",
      sourceName: "dicomweb",
      configuration: {
        friendlyName: "Orthanc",
        name: "orthanc",
        qidoRoot: "/dicom-web",
        wadoRoot: "/dicom-web",
        wadoUriRoot: "/wado",
        qidoSupportsIncludeField: false,
        imageRendering: "wadors",
        thumbnailRendering: "wadors",
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
      },
    },
  ],
  defaultDataSourceName: "dicomweb",
};
