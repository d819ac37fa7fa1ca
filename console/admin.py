"""Console-wide admin configuration: the sign-in form every operator passes through."""

from __future__ import annotations

from django.contrib import admin

from system.signin import ThrottledAuthenticationForm

# The console's only way in: this login form refuses locked usernames and addresses
# (failures are counted by the user_login_failed receiver in system.signin).
admin.site.login_form = ThrottledAuthenticationForm
