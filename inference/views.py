from __future__ import annotations

from django.shortcuts import render


def playground(request):
    # The playground needs a running deployment (issue #4) first.
    return render(request, "inference/playground.html")
