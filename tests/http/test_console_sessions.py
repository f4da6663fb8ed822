"""Console sessions live in Redis: signing out ends a copied cookie too, and a session's key expires by TTL."""

from __future__ import annotations

from billing.api.auth import token_digest
from billing.bootstrap import Context
from tests.support.console import ConsoleClient

DAY_SECONDS = 86_400


def copy_of(client: ConsoleClient) -> ConsoleClient:
    """Another browser holding the same cookies (a stolen or copied session cookie)."""
    other = ConsoleClient(client.base_url)
    other.cookies = dict(client.cookies)
    return other


async def session_keys(ctx: Context) -> list[str]:
    pattern = ctx.ledger.keys.console_session("*")
    return [key.decode() if isinstance(key, bytes) else key async for key in ctx.redis.scan_iter(match=pattern)]


async def test_sign_out_ends_a_copied_session_cookie_too(console: ConsoleClient) -> None:
    await console.sign_in("tok-support")
    thief = copy_of(console)
    try:
        assert (await thief.get("/console/users")).status == 200  # the copy works while the session lives
        home = await console.get("/console")
        out = await console.post("/console/logout", {"_xsrf": home.xsrf})
        assert out.status == 303 and "console_session" not in console.cookies
        page = await thief.get("/console/users?user=1")
        assert page.status == 401 and 'name="token"' in page.text  # the sign-in page, not the user
        assert (await thief.get("/console")).status == 401
    finally:
        thief.close()


async def test_the_session_key_holds_no_token_and_lives_one_day(console: ConsoleClient, ctx: Context) -> None:
    assert await session_keys(ctx) == []
    await console.sign_in("tok-support")
    [key] = await session_keys(ctx)
    assert 0 < await ctx.redis.ttl(key) <= DAY_SECONDS
    stored = await ctx.redis.get(key)
    assert (stored.decode() if isinstance(stored, bytes) else stored) == token_digest("tok-support").hex()
    cookie = console.cookies["console_session"]
    assert token_digest("tok-support").hex() not in cookie and "tok-support" not in cookie
    assert key.rsplit(":", 1)[-1] not in cookie  # the key is named by the id's digest, not the id

    await ctx.redis.pexpire(key, 1)  # what the TTL does after a day
    while await ctx.redis.exists(key):
        await ctx.redis.ping()
    page = await console.get("/console")
    assert page.status == 401 and 'name="token"' in page.text


async def test_signing_in_again_replaces_the_session(console: ConsoleClient, ctx: Context) -> None:
    await console.sign_in("tok-support")
    first = copy_of(console)
    try:
        home = await console.get("/console")  # signed in, the sign-in form redirects: post it from here
        again = await console.post("/console/login", {"_xsrf": home.xsrf, "token": "tok-admin", "next": "/console"})
        assert again.status == 303
        assert len(await session_keys(ctx)) == 1
        assert (await first.get("/console")).status == 401
        assert (await console.get("/console/reports")).status == 200  # the admin session
    finally:
        first.close()
