from io import StringIO

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command
from rest_framework.authtoken.models import Token

User = get_user_model()


def run(*args: str) -> list[str]:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip().splitlines()


@pytest.mark.django_db
def test_adduser_creates_a_staff_user_in_the_role():
    run(
        "adduser",
        "hanako",
        "--role",
        "inside_sales",
        "--password",
        "Kd8-vq2#Lm",
        "--email",
        "h@example.jp",
    )
    user = User.objects.get(username="hanako")
    assert user.is_staff and not user.is_superuser
    assert user.email == "h@example.jp"
    assert list(user.groups.values_list("name", flat=True)) == ["inside_sales"]
    assert authenticate(username="hanako", password="Kd8-vq2#Lm") == user


@pytest.mark.django_db
def test_adduser_prints_a_random_password_when_none_is_given():
    lines = run("adduser", "taro", "--role", "sales")
    password = lines[-1].split(":", 1)[1].strip()
    assert len(password) >= 12
    assert authenticate(username="taro", password=password).username == "taro"
    assert run("adduser", "jiro", "--role", "sales")[-1] != lines[-1]


@pytest.mark.django_db
def test_adduser_refuses_an_unknown_role_and_lists_the_valid_ones():
    with pytest.raises(CommandError) as error:
        run("adduser", "x", "--role", "admin")
    for role in ("marketer", "inside_sales", "sales", "manager"):
        assert role in str(error.value)
    assert not User.objects.filter(username="x").exists()


@pytest.mark.django_db
def test_adduser_refuses_an_existing_username_unless_update(sales_rep):
    with pytest.raises(CommandError, match="--update"):
        run("adduser", "sales1", "--role", "manager")
    assert list(sales_rep.groups.values_list("name", flat=True)) == ["sales"]
    run("adduser", "sales1", "--role", "manager", "--password", "N3w-Secret-99", "--update")
    sales_rep.refresh_from_db()
    assert list(sales_rep.groups.values_list("name", flat=True)) == ["manager"]
    assert sales_rep.is_staff
    assert authenticate(username="sales1", password="N3w-Secret-99") == sales_rep


@pytest.mark.django_db
def test_adduser_update_without_password_keeps_it(marketer):
    run("adduser", "marketer1", "--role", "manager", "--update")
    assert authenticate(username="marketer1", password="pw-Secret-123") == marketer


@pytest.mark.django_db
def test_adduser_refuses_a_weak_password():
    with pytest.raises(CommandError):
        run("adduser", "weak", "--role", "sales", "--password", "123")
    assert not User.objects.filter(username="weak").exists()


@pytest.mark.django_db
def test_issuetoken_prints_the_token_as_the_last_line(is_rep):
    key = run("issuetoken", "is1")[-1]
    assert Token.objects.get(user=is_rep).key == key
    assert run("issuetoken", "is1")[-1] == key


@pytest.mark.django_db
def test_issuetoken_rotate_replaces_the_token(is_rep, api_client):
    old = run("issuetoken", "is1")[-1]
    new = run("issuetoken", "is1", "--rotate")[-1]
    assert new != old
    assert list(Token.objects.filter(user=is_rep).values_list("key", flat=True)) == [new]
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {old}")
    assert api_client.get("/api/schema/").status_code == 401


@pytest.mark.django_db
def test_issuetoken_refuses_an_unknown_user():
    with pytest.raises(CommandError, match="nobody"):
        run("issuetoken", "nobody")
    assert not Token.objects.exists()
