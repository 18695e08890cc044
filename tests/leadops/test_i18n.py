import re
from pathlib import Path

import polib
import pytest
from django.conf import settings as django_settings
from django.urls import reverse
from django.utils import translation

from leadops import settings as product_settings
from leadops.i18n_compile import compile_catalogues
from leadops.models import JobLevel, Stage, Temperature

PO_PATH = Path(django_settings.BASE_DIR) / "locale" / "ja" / "LC_MESSAGES" / "django.po"
LOGIN_URL = reverse("admin:login")


@pytest.fixture
def compiled(settings):
    """The .mo built from the committed .po, as the build does, and freshly loaded."""
    compile_catalogues()
    # Re-setting LOCALE_PATHS makes Django drop the catalogues it has cached.
    settings.LOCALE_PATHS = list(django_settings.LOCALE_PATHS)


def test_settings_speak_japanese_first_and_english():
    # The module's own value: the suite itself runs with English (tests/conftest.py).
    assert product_settings.LANGUAGE_CODE == "ja"
    assert [code for code, _name in django_settings.LANGUAGES] == ["ja", "en"]
    assert "django.middleware.locale.LocaleMiddleware" in django_settings.MIDDLEWARE
    assert str(django_settings.LOCALE_PATHS[0]).endswith("locale")


@pytest.mark.django_db
def test_a_browser_without_a_language_preference_gets_japanese(client, settings, compiled):
    settings.LANGUAGE_CODE = product_settings.LANGUAGE_CODE
    body = client.get(LOGIN_URL).content.decode()
    assert '<html lang="ja"' in body and "ログイン" in body


def test_catalogue_is_complete_and_well_formed():
    po = polib.pofile(str(PO_PATH))
    assert po.metadata["Language"] == "ja"
    assert po.metadata["Plural-Forms"] == "nplurals=1; plural=0;"
    live = [entry for entry in po if not entry.obsolete]
    assert len(live) > 100
    assert [e.msgid for e in live if "fuzzy" in e.flags] == []
    assert [e.msgid for e in live if not (e.msgstr or e.msgstr_plural.get(0))] == []


@pytest.mark.parametrize("app", ["leadops", "scoring", "handoff", "nurturing"])
def test_every_string_of_the_models_is_in_the_catalogue(app):
    source = (Path(django_settings.BASE_DIR) / app / "models.py").read_text()
    msgids = set(re.findall(r'_\("((?:[^"\\]|\\.)*)"\)', source))
    catalogue = {entry.msgid for entry in polib.pofile(str(PO_PATH)) if entry.msgstr}
    assert len(msgids) > 10
    assert msgids - catalogue == set()


def test_choices_are_shown_in_plain_japanese(compiled):
    with translation.override("ja"):
        assert str(JobLevel.DIRECTOR.label) == "部長・事業部長"
        assert str(JobLevel.EXECUTIVE.label) == "経営層・役員"
        assert str(Stage.DISQUALIFIED.label) == "対象外"
        assert str(Temperature.HOT.label) == "ホット"
    with translation.override("en"):
        assert str(JobLevel.DIRECTOR.label) == "Director (部長・事業部長)"


@pytest.mark.django_db
def test_admin_login_page_follows_accept_language(client, compiled):
    japanese = client.get(LOGIN_URL, HTTP_ACCEPT_LANGUAGE="ja").content.decode()
    assert '<html lang="ja"' in japanese and "ログイン" in japanese
    english = client.get(LOGIN_URL, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert '<html lang="en"' in english and "Log in" in english
    assert "ログイン" not in english


@pytest.mark.django_db
def test_admin_login_page_has_a_language_switcher(client):
    body = client.get(LOGIN_URL).content.decode()
    assert 'action="/i18n/setlang/"' in body and 'name="language"' in body
    assert 'value="en"' in body and 'value="ja"' in body
    assert "csrfmiddlewaretoken" in body


@pytest.mark.django_db
def test_switching_language_sticks_over_the_browsers_choice(client, admin_user, compiled):
    client.force_login(admin_user)
    index = client.get(reverse("admin:index"), HTTP_ACCEPT_LANGUAGE="ja").content.decode()
    assert 'action="/i18n/setlang/"' in index and "user-tools" in index
    response = client.post("/i18n/setlang/", {"language": "en", "next": "/admin/"})
    assert response.status_code == 302 and response["Location"] == "/admin/"
    english = client.get("/admin/", HTTP_ACCEPT_LANGUAGE="ja").content.decode()
    assert '<html lang="en"' in english and "Log out" in english
    client.post("/i18n/setlang/", {"language": "ja", "next": "/"})
    japanese = client.get(reverse("admin:leadops_lead_changelist"), HTTP_ACCEPT_LANGUAGE="en")
    assert '<html lang="ja"' in japanese.content.decode()
    assert "リード" in japanese.content.decode()


@pytest.mark.django_db
def test_home_page_is_translated(client, manager, compiled):
    client.force_login(manager)
    japanese = client.get("/", HTTP_ACCEPT_LANGUAGE="ja").content.decode()
    assert "ステージ別リード数" in japanese and "本文へスキップ" in japanese
    english = client.get("/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Leads by stage" in english and "Skip to main content" in english


@pytest.mark.django_db
def test_command_errors_are_translated(compiled):
    from django.core.management import CommandError, call_command

    with translation.override("ja"), pytest.raises(CommandError, match="不明なロール"):
        call_command("adduser", "x", "--role", "boss")
    with translation.override("en"), pytest.raises(CommandError, match="Unknown role"):
        call_command("adduser", "x", "--role", "boss")
