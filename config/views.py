"""View helpers every app's pages share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.contrib import messages
from django.shortcuts import redirect, render

from config.errors import DomainError


def confirm_delete(request, obj, *, delete, done_url):
    """Asks before deleting `obj` (GET shows the confirmation page); on POST calls
    `delete()` and goes to `done_url`, or back to the object with the refusal."""
    if request.method != "POST":
        return render(request, "confirm_delete.html", {"object": obj, "cancel": obj.get_absolute_url()})
    try:
        delete()
    except DomainError as exc:
        messages.error(request, exc.message)
        return redirect(obj)
    messages.success(request, f"Deleted {obj}.")
    return redirect(done_url)


@contextmanager
def errors_on(form) -> Iterator[None]:
    """Shows a DomainError raised in the block on `form`, as an error of the whole
    form; the rest of the block is skipped and the view goes on after it (to
    render the form again), as it would for an invalid field."""
    try:
        yield
    except DomainError as exc:
        form.add_error(None, exc.message)
