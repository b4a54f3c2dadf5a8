"""The sign-in mail: the link, how long it lasts, and what to do if nobody asked for it."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import make_msgid

from billwatch.config import Settings


def sign_in_link(settings: Settings, token: str) -> str:
    return f"{settings.console_url}/sign-in/{token}"


def sign_in_message(settings: Settings, email: str, token: str) -> EmailMessage:
    minutes = settings.console_link_ttl_seconds // 60
    link = sign_in_link(settings, token)
    message = EmailMessage()
    message["Subject"] = "[billwatch] Your console sign-in link"
    message["From"] = settings.smtp_from
    message["To"] = email
    message["Message-ID"] = make_msgid(domain="billwatch")
    message.set_content(
        f"Someone (we hope you) asked to sign in to the billwatch console.\n\n"
        f"Open this link within {minutes} minutes to sign in; it works once:\n\n{link}\n\n"
        f"If you did not ask for it, ignore this mail: nobody can use the link without it.\n")
    return message
