"""Console forms of the key store: generate or import SSH and PGP keys, and edit a PGP key."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from courier_site.errors import CourierError
from keystore import pgp, ssh
from keystore.lifecycle import successor_problem
from keystore.models import PgpKey, SshKey


class SshKeyAddForm(forms.ModelForm):
    MODES = (("generate", "Generate a new key pair"), ("import", "Import a private key"))

    mode = forms.ChoiceField(choices=MODES, initial="generate", help_text="Generate here, or import an existing key.")
    key_type = forms.ChoiceField(
        choices=SshKey.KeyType.choices,
        initial="ed25519",
        required=False,
        help_text="For generated keys. Ed25519 is short and fast; RSA 4096 for old servers.",
    )
    private_key = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 8}),
        strip=False,
        help_text="For imports: OpenSSH or PEM (PKCS#1, PKCS#8) private key text.",
    )
    passphrase = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Passphrase of the imported key, if it has one. Not stored.",
    )

    class Meta:
        model = SshKey
        fields = ("name", "notes")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        try:
            if data.get("mode") == "import":
                if not data.get("private_key"):
                    raise ValidationError({"private_key": "Paste the private key to import."})
                self.material = ssh.load(data["private_key"], data.get("passphrase") or None)
            else:
                self.material = ssh.generate(data.get("key_type") or "ed25519")
        except CourierError as error:
            field = "passphrase" if error.code == "E4001" else "private_key"
            raise ValidationError({field: str(error)}) from error
        duplicate = SshKey.objects.filter(fingerprint=self.material.fingerprint).first()
        if duplicate is not None:
            raise ValidationError({"private_key": f"[E4002] this key is already stored as '{duplicate.name}'"})
        return data


class PgpKeyAddForm(forms.ModelForm):
    MODES = (("generate", "Generate a new key pair"), ("import", "Import a public key or key pair"))

    mode = forms.ChoiceField(choices=MODES, initial="generate")
    algorithm_choice = forms.ChoiceField(
        choices=PgpKey.Algorithm.choices,
        initial="rsa_3072",
        required=False,
        label="Algorithm",
        help_text="For generated keys.",
    )
    email = forms.EmailField(required=False, help_text="E-mail in the key's user id (generated keys).")
    expire_days = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=3650,
        help_text="Generated keys expire after this many days; empty = never.",
    )
    key_data = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 8}),
        strip=False,
        help_text="For imports: the armored key block (public key or private key).",
    )
    key_file = forms.FileField(required=False, help_text="For imports: a binary or armored key file instead.")
    passphrase = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False),
        help_text=(
            "Imports: the passphrase of the private key. Generated keys: optional passphrase that protects "
            "the private key, also when an Admin exports it. Kept sealed, never shown."
        ),
    )
    passphrase_again = forms.CharField(
        required=False,
        strip=False,
        label="Passphrase (again)",
        widget=forms.PasswordInput(render_value=False),
        help_text="Generated keys with a passphrase: type it again.",
    )

    class Meta:
        model = PgpKey
        fields = ("name", "purpose")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors:
            return data
        try:
            if data.get("mode") == "import":
                raw = data.get("key_file").read() if data.get("key_file") else data.get("key_data")
                if not raw:
                    raise ValidationError({"key_data": "Paste the key block or choose a key file."})
                self.material = pgp.load(raw, data.get("passphrase") or None)
            else:
                passphrase = data.get("passphrase") or None
                if passphrase != (data.get("passphrase_again") or None):
                    raise ValidationError({"passphrase_again": "The two passphrases differ."})
                self.material = pgp.generate(
                    data.get("algorithm_choice") or "rsa_3072",
                    data["name"],
                    data.get("email") or "",
                    data.get("expire_days"),
                    passphrase,
                )
        except CourierError as error:
            field = "passphrase" if error.code == "E4001" else "key_data"
            raise ValidationError({field: str(error)}) from error
        duplicate = PgpKey.objects.filter(fingerprint=self.material.fingerprint).first()
        if duplicate is not None:
            raise ValidationError({"key_data": f"[E4002] this key is already stored as '{duplicate.name}'"})
        return data


class PgpKeyChangeForm(forms.ModelForm):
    """Name, purpose and successor; the status only moves through the lifecycle actions (retire, revoke, delete)."""

    class Meta:
        model = PgpKey
        fields = ("name", "purpose", "successor_key")

    def clean_successor_key(self) -> Any:
        successor = self.cleaned_data.get("successor_key")
        problem = successor_problem(self.instance, successor)
        if problem:
            raise ValidationError(problem)
        return successor
