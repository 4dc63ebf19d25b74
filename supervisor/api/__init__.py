"""The HTTP API of the supervisor (``[api]``): JSON under ``/api/v1``, login with bearer
tokens, roles checked per request, server-sent events resumable by ``seq``, and the
OpenAPI document generated from the same route declarations the dispatcher uses.

Modules: ``errors`` (the one error shape), ``declare`` (route and parameter declarations,
JSON-schema checks of input), ``routes`` (the route table), ``openapi`` (the document),
``sessions`` (login, tokens, throttling of failed logins), ``shapes`` (JSON of points,
alarms, commands), ``reads``/``actions``/``admin`` (the handlers), ``stream`` (the
event stream), ``resource`` (twisted.web dispatch), ``service`` (the listening service).
"""
