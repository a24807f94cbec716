// /docs: Swagger UI from the node's own copy (swagger-ui-bundle), started here rather than in an
// inline script so the Content-Security-Policy can forbid inline scripts everywhere.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
