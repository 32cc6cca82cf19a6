from __future__ import annotations

from django.shortcuts import render


def cluster_page(request):
    # Nodes, accelerators and caches arrive with the node agent (issue #3).
    return render(request, "cluster/cluster.html")
