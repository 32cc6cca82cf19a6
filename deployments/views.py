from __future__ import annotations

from django.shortcuts import render


def deployment_list(request):
    # The deploy wizard and deployments arrive with issue #4.
    return render(request, "deployments/deployment_list.html")
