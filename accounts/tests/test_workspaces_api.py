"""Workspaces and their members through the API: whoever creates a workspace
owns it, only owners manage members, the last owner stays, outsiders see 404."""

from __future__ import annotations

from accounts.models import Membership, Role
from tests.support.factories import UserFactory
from tests.support.nodes import api_as


def members_url(workspace, user=None) -> str:
    return f"/api/v1/workspaces/{workspace.pk}/members/" + (f"{user.pk}/" if user else "")


def test_whoever_creates_a_workspace_becomes_its_owner(cast):
    response = api_as(cast.member).post("/api/v1/workspaces/", {"name": "Research"}, format="json")

    assert response.status_code == 201
    assert response.json()["slug"] == "research" and response.json()["role"] == "owner"
    assert Membership.objects.get(workspace__slug="research").user == cast.member


def test_a_workspace_name_already_taken_is_refused(cast):
    response = api_as(cast.member).post("/api/v1/workspaces/", {"name": "team"}, format="json")

    assert response.status_code == 400
    assert response.json()["detail"] == "A workspace named “team” already exists."


def test_an_owner_adds_changes_and_removes_members(cast):
    newcomer = UserFactory(username="newcomer")
    owner = api_as(cast.admin)

    added = owner.post(members_url(cast.team), {"username": "newcomer", "role": "editor"}, format="json")
    changed = owner.patch(members_url(cast.team, newcomer), {"role": "viewer"}, format="json")
    listed = api_as(cast.viewer).get(members_url(cast.team))
    removed = owner.delete(members_url(cast.team, newcomer))

    assert added.status_code == 201 and added.json()["role"] == "editor"
    assert changed.status_code == 200 and changed.json() | {"created_at": None} == {
        "user": newcomer.pk, "username": "newcomer", "role": "viewer", "created_at": None,
    }  # fmt: skip
    assert [(m["username"], m["role"]) for m in listed.json()["results"]] == [
        ("admin", "owner"), ("member", "editor"), ("newcomer", "viewer"), ("viewer", "viewer"),
    ]  # fmt: skip
    assert removed.status_code == 204
    assert not Membership.objects.filter(workspace=cast.team, user=newcomer).exists()


def test_adding_someone_unknown_or_already_in_says_so(cast):
    owner = api_as(cast.admin)

    unknown = owner.post(members_url(cast.team), {"username": "nobody", "role": "editor"}, format="json")
    again = owner.post(members_url(cast.team), {"username": "member"}, format="json")

    assert unknown.status_code == 400
    assert unknown.json()["detail"].startswith("There is no active user named “nobody”.")
    assert again.status_code == 409
    assert again.json()["detail"] == "member is a member of Team already; change their role instead."


def test_editors_and_viewers_may_not_manage_members(cast):
    for user in (cast.member, cast.viewer):
        api = api_as(user)
        added = api.post(members_url(cast.team), {"username": "outsider"}, format="json")
        promoted = api.patch(members_url(cast.team, user), {"role": "owner"}, format="json")
        removed = api.delete(members_url(cast.team, cast.admin))

        assert (added.status_code, promoted.status_code, removed.status_code) == (403, 403, 403), user
        assert added.json()["detail"] == "Only the workspace's owners may manage its members."
    assert Membership.objects.get(workspace=cast.team, user=cast.viewer).role == Role.VIEWER


def test_the_last_owner_can_be_neither_demoted_nor_removed(cast):
    owner = api_as(cast.admin)

    demoted = owner.patch(members_url(cast.team, cast.admin), {"role": "editor"}, format="json")
    removed = owner.delete(members_url(cast.team, cast.admin))

    assert demoted.status_code == removed.status_code == 409
    assert demoted.json()["detail"] == (
        "admin is the last owner of Team; make someone else an owner before demoting them."
    )
    assert removed.json()["detail"].endswith("before removing them.")
    assert Membership.objects.get(workspace=cast.team, user=cast.admin).role == Role.OWNER


def test_with_a_second_owner_the_first_may_step_down(cast):
    owner = api_as(cast.admin)
    owner.patch(members_url(cast.team, cast.member), {"role": "owner"}, format="json")

    assert owner.patch(members_url(cast.team, cast.admin), {"role": "editor"}, format="json").status_code == 200
    assert api_as(cast.member).delete(members_url(cast.team, cast.admin)).status_code == 204


def test_outsiders_get_404_for_another_workspace_and_its_members(cast):
    outsider = api_as(cast.outsider)

    assert outsider.get(f"/api/v1/workspaces/{cast.team.pk}/").status_code == 404
    assert outsider.get(members_url(cast.team)).status_code == 404
    assert outsider.post(members_url(cast.team), {"username": "outsider"}, format="json").status_code == 404
    assert outsider.patch(members_url(cast.team, cast.admin), {"role": "viewer"}, format="json").status_code == 404
    assert outsider.delete(members_url(cast.team, cast.admin)).status_code == 404
    assert api_as(cast.admin).delete(members_url(cast.team, cast.outsider)).status_code == 404


def test_an_unknown_role_is_refused(cast):
    response = api_as(cast.admin).patch(members_url(cast.team, cast.member), {"role": "boss"}, format="json")

    assert response.status_code == 400
    assert "role" in response.json()["errors"]
