"""Operations endpoints: /openapi.json, /docs (Swagger UI from the swagger-ui-py package), /metrics."""

from __future__ import annotations

from typing import Any

import orjson
import tornado.web
from swagger_ui.core import ApplicationDocument

from billing.api.handlers.base import BaseHandler, OriginAware
from billing.infra.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

DOCS_PREFIX = "/docs"
SPEC_URL = "/openapi.json"
OPENAPI_BUILDER = "openapi_builder"  # the application setting that holds billing.api.openapi.build_spec


class OpenAPIHandler(BaseHandler):
    compute_etag = tornado.web.RequestHandler.compute_etag  # cacheable, unlike the API: keep ETag / 304
    check_etag_header = tornado.web.RequestHandler.check_etag_header
    _cache: dict[str | None, bytes] = {}  # by BILLING_PUBLIC_URL (the document's servers entry)

    def get(self) -> None:
        public_url = self.ctx.settings.public_url
        if public_url not in self._cache:
            # The builder comes with the application (billing/app.py): it reads the route table, which names
            # this handler, so the handler cannot import it.
            build_spec = self.application.settings[OPENAPI_BUILDER]
            self._cache[public_url] = orjson.dumps(build_spec(public_url))
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "public, max-age=60")
        self.finish(self._cache[public_url])


def _swagger_document() -> ApplicationDocument:
    """swagger-ui-py's page template and bundled assets (Swagger UI 5: OpenAPI 3.1), pointed at /openapi.json."""
    doc = ApplicationDocument(app=None, config_rel_url=SPEC_URL, url_prefix=DOCS_PREFIX, title="billing API")
    doc.parameters["url"] = orjson.dumps(SPEC_URL).decode()
    return doc


SWAGGER = _swagger_document()


class DocsHandler(BaseHandler):
    compute_etag = tornado.web.RequestHandler.compute_etag
    check_etag_header = tornado.web.RequestHandler.check_etag_header

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(SWAGGER.doc_html)


class DocsAssetHandler(OriginAware, tornado.web.StaticFileHandler):
    """Swagger UI's JS/CSS, served from the installed package (no CDN, works offline)."""

    def initialize(self, ctx: Any = None, route: Any = None, **kwargs: Any) -> None:  # type: ignore[override]
        self.route_name = route.template if route is not None else ""
        super().initialize(path=SWAGGER.static_dir)


class MetricsHandler(BaseHandler):
    async def get(self) -> None:
        body = await self.ctx.metrics.render(self.ctx.projector, self.ctx.webhooks)
        self.set_header("Content-Type", METRICS_CONTENT_TYPE)
        self.finish(body)
