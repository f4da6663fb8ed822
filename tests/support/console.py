"""A cookie-keeping HTTP client for the console's HTML pages (what a browser does, without one)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

XSRF_FIELD = re.compile(r'name="_xsrf" value="([^"]+)"')


@dataclass
class Page:
    status: int
    headers: Any
    text: str
    set_cookies: list[str] = field(default_factory=list)

    @property
    def xsrf(self) -> str:
        match = XSRF_FIELD.search(self.text)
        assert match, "no _xsrf field on the page"
        return match.group(1)


class ConsoleClient:
    def __init__(self, base_url: str, **fetch_options: Any) -> None:
        self.base_url = base_url
        self.cookies: dict[str, str] = {}
        self.fetch_options = fetch_options
        self.client = AsyncHTTPClient(force_instance=True)

    async def request(
        self, method: str, path: str, form: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> Page:
        all_headers = dict(headers or {})
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form)
            all_headers["Content-Type"] = "application/x-www-form-urlencoded"
        answer = await self.client.fetch(
            HTTPRequest(
                self.base_url + path,
                method=method,
                headers=all_headers,
                body=body,
                follow_redirects=False,
                **self.fetch_options,
            ),
            raise_error=False,
        )
        set_cookies = answer.headers.get_list("Set-Cookie")
        for raw in set_cookies:
            for name, morsel in SimpleCookie(raw).items():
                if morsel.value in ("", '""') or morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.coded_value
        return Page(answer.code, answer.headers, (answer.body or b"").decode(), set_cookies)

    async def get(self, path: str, **kwargs: Any) -> Page:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, form: dict[str, str], **kwargs: Any) -> Page:
        return await self.request("POST", path, form, **kwargs)

    async def _form_xsrf(self) -> str:
        login = await self.get("/console/login")
        if login.status == 302:  # already signed in: the sign-in form redirects, post it from the home page
            login = await self.get("/console")
        return login.xsrf

    async def sign_in(self, token: str, next_url: str = "/console") -> Page:
        return await self.post("/console/login", {"_xsrf": await self._form_xsrf(), "token": token, "next": next_url})

    async def sign_in_person(self, name: str, password: str, next_url: str = "/console") -> Page:
        form = {"_xsrf": await self._form_xsrf(), "name": name, "password": password, "next": next_url}
        return await self.post("/console/login", form)

    def close(self) -> None:
        self.client.close()
