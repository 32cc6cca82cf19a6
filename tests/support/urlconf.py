"""The console's URL configuration as data: every named URL with its routes and (for the API) the
methods its router maps, and the keyword arguments each takes. The permission matrix checks its rows
against it; the secrets sweep visits every page and endpoint through it."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.urls import URLPattern, URLResolver, get_resolver


@dataclass
class Route:
    routes: set[str] = field(default_factory=set)
    methods: set[str] = field(default_factory=set)  # what a DRF router maps, for API routes
    unnamed: bool = False


def named_urls(*, excluded_namespaces=(), excluded_routes=(), excluded_names=()) -> dict[str, Route]:
    """Every named URL of config.urls (namespaced names) with its route(s) and, for the API, the methods
    its router maps; unnamed ones as "<unnamed route>"; the exclusions left out."""
    found: dict[str, Route] = {}

    def walk(patterns, prefix: str, namespace: str | None) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                inner = ":".join(filter(None, [namespace, pattern.namespace])) or None
                if pattern.namespace in excluded_namespaces:
                    continue
                walk(pattern.url_patterns, prefix + str(pattern.pattern), inner)
            elif isinstance(pattern, URLPattern):
                route = prefix + str(pattern.pattern)
                if route in excluded_routes:
                    continue
                if pattern.name is None:
                    found.setdefault(f"<unnamed {route}>", Route(unnamed=True)).routes.add(route)
                    continue
                name = f"{namespace}:{pattern.name}" if namespace else pattern.name
                if name in excluded_names:
                    continue
                entry = found.setdefault(name, Route())
                entry.routes.add(route)
                actions = getattr(pattern.callback, "actions", None)
                if actions:
                    allowed = set(pattern.callback.cls.http_method_names) - {"head", "options"}
                    entry.methods |= {m.upper() for m in actions if m in allowed}

    walk(get_resolver().url_patterns, "", None)
    return found


def arguments_of(name: str) -> set[str]:
    """The keyword arguments URL `name` takes (the format suffix's aside)."""
    resolver = get_resolver()
    possibilities = resolver.reverse_dict.getlist(name.split(":")[-1]) if ":" not in name else None
    if possibilities is None:
        namespace, _, short = name.rpartition(":")
        resolver = get_resolver().namespace_dict[namespace][1]
        possibilities = resolver.reverse_dict.getlist(short)
    params = min((set(p[0][0][1]) for p in possibilities), key=len)
    return params - {"format"}
