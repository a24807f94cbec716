"""The whole configuration: every section, their cross-checks and the paths derived from them."""
from __future__ import annotations

from pathlib import Path

from pydantic import model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from dicomnode.config.network import (
    Destination,
    NodeSettings,
    Route,
    RouteMatch,
    SecuritySettings,
    SenderSettings,
    SeriesSettings,
    TlsSettings,
)
from dicomnode.config.services import (
    AtnaSettings,
    ClinicalSettings,
    InferenceSettings,
    JobSettings,
    PriorsSettings,
    RetentionSettings,
    WebSettings,
)
from dicomnode.results.options import ResultOptions


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DICOMNODE_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    node: NodeSettings = NodeSettings()
    security: SecuritySettings = SecuritySettings()
    tls: TlsSettings = TlsSettings()
    series: SeriesSettings = SeriesSettings()
    # with no [[routes]] in the file, chest CT goes to the lung-nodule pipeline (one series per study)
    routes: list[Route] = [
        Route(name="chest-ct", pipeline="lung-nodule",
              match=RouteMatch(modality=["CT"], min_slices=16, max_slice_thickness_mm=3.0),
              one_series_per_study=True)
    ]
    destinations: dict[str, Destination] = {}
    sender: SenderSettings = SenderSettings()
    jobs: JobSettings = JobSettings()
    inference: InferenceSettings = InferenceSettings()
    clinical: ClinicalSettings = ClinicalSettings()
    results: ResultOptions = ResultOptions()
    retention: RetentionSettings = RetentionSettings()
    web: WebSettings = WebSettings()
    atna: AtnaSettings = AtnaSettings()
    priors: PriorsSettings = PriorsSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # environment beats the file (passed as init kwargs); no .env or secrets files
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _routes_name_known_destinations(self) -> "Settings":
        for route in self.routes:
            for dest in route.destinations:
                if dest != "sender" and dest not in self.destinations:
                    raise ValueError(
                        f"route {route.name!r} names destination {dest!r}, which is not in [destinations]"
                    )
            for dest in route.forward_to:  # "sender" is refused: the images would go back where they came from
                if dest not in self.destinations:
                    raise ValueError(f"route {route.name!r} forward_to names destination {dest!r}, which is not in "
                                     f"[destinations] (known: {', '.join(sorted(self.destinations)) or 'none'})")
        return self

    # derived paths -------------------------------------------------------------
    @property
    def spool_dir(self) -> Path:
        return self.node.spool_dir or self.node.data_dir / "spool"

    @property
    def outbox_dir(self) -> Path:
        return self.node.outbox_dir or self.node.data_dir / "outbox"

    @property
    def database_url(self) -> str:
        if self.node.database_url:
            return self.node.database_url
        return f"sqlite:///{(self.node.data_dir / 'audit.sqlite').resolve()}"

    @property
    def engine_cache_dir(self) -> Path:
        return self.inference.engine_cache_dir or self.node.data_dir / "engines"
