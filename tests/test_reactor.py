"""The test run hosts Twisted on asyncio, as the daemon does."""

import asyncio

import pytest_twisted


def test_asyncio_reactor_is_installed():
    from twisted.internet import asyncioreactor, reactor

    assert isinstance(reactor, asyncioreactor.AsyncioSelectorReactor)


@pytest_twisted.ensureDeferred
async def test_asyncio_future_can_be_awaited_from_a_deferred_test():
    from twisted.internet import defer

    loop = asyncio.get_event_loop()
    fut = loop.create_future()
    loop.call_soon(fut.set_result, 42)
    assert await defer.Deferred.fromFuture(fut) == 42
