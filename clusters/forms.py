"""Forms of the operations admin: cluster and node editing, SSH credentials, and the lifecycle operations.

Forms parse and validate input; saving goes through the services (``clusters.services``). Errors a service
raises are attached back to the form field they name with :func:`apply_service_errors`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError

from . import validators
from .choices import NodeRole, NodeStatus
from .fields import Secret
from .models import Cluster, Node, SSHCredential
from .services.clusters import NODE_FIELDS

__all__ = [
    "AddNodesForm",
    "AddNodesFormSet",
    "ClusterForm",
    "InstallForm",
    "NodeForm",
    "NodeFormSet",
    "NodeInlineForm",
    "NodeInlineFormSet",
    "RemoveNodesForm",
    "SSHCredentialForm",
    "SecretTextarea",
    "StringListField",
    "UninstallForm",
    "UpgradeForm",
    "apply_service_errors",
    "is_node_error_key",
    "node_spec",
    "service_error_dict",
]

_NODE_KEY_RE = re.compile(r"^nodes\[(?P<index>\d+)\](?:\.(?P<field>\w+))?$")


class StringListField(forms.CharField):
    """A list of short strings entered as one text, separated by commas or line breaks."""

    def __init__(self, *, multiline: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault(
            "widget",
            forms.Textarea(attrs={"rows": 2, "cols": 40}) if multiline else forms.TextInput(attrs={"size": 24}),
        )
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return ", ".join(str(item) for item in value)
        return value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        if isinstance(value, (list, tuple)):
            return [str(item) for item in value]
        text = super().to_python(value) or ""
        return [item.strip() for item in re.split(r"[,\n]", text) if item.strip()]

    def has_changed(self, initial: Any, data: Any) -> bool:
        if self.disabled:
            return False
        return self.to_python(initial or []) != self.to_python(data)


def _json_widget(rows: int = 3, cols: int = 40) -> forms.Textarea:
    return forms.Textarea(
        attrs={"rows": rows, "cols": cols, "class": "vLargeTextField rke2-json", "spellcheck": "false"}
    )


# --- errors raised by services ------------------------------------------------------------------------------------


def _messages(value: Any) -> list[str]:
    if isinstance(value, ValidationError):
        return list(value.messages)
    if isinstance(value, (list, tuple)):
        result: list[str] = []
        for item in value:
            result.extend(_messages(item))
        return result
    return [str(value)]


def apply_service_errors(form: forms.BaseForm, errors: Mapping[str, Any]) -> dict[str, Any]:
    """Attach a service's field-keyed errors to ``form``: a key naming a form field goes next to that field, other
    keys become form-wide errors that name the key. Keys of the shape ``nodes[i]...`` are returned untouched for
    the caller to place (node errors belong to node forms)."""
    rest: dict[str, Any] = {}
    for key, value in errors.items():
        if _NODE_KEY_RE.match(key):
            rest[key] = value
            continue
        field = key
        messages = _messages(value)
        if field in form.fields and not form.fields[field].disabled:
            form.add_error(field, messages)
        elif field == NON_FIELD_ERRORS:
            form.add_error(None, messages)
        else:
            label = key.replace("_", " ")
            form.add_error(None, [f"{label}: {message}" for message in messages])
    return rest


def service_error_dict(exc: ValidationError | Exception) -> dict[str, list[str]]:
    """Field-keyed messages of an error raised by a service (form-wide messages under ``__all__``)."""
    if isinstance(exc, ValidationError):
        if hasattr(exc, "error_dict"):
            return dict(exc.message_dict)
        return {NON_FIELD_ERRORS: list(exc.messages)}
    return {NON_FIELD_ERRORS: [getattr(exc, "message", str(exc))]}


def node_spec(form: forms.BaseForm) -> dict[str, Any]:
    """The node fields of a validated node form, as the services take them."""
    return {field: form.cleaned_data[field] for field in NODE_FIELDS if field in form.cleaned_data}


# --- clusters ------------------------------------------------------------------------------------------------------


class ClusterForm(forms.ModelForm):
    """A cluster's settings. The join token and kubeconfig are never part of the form."""

    tls_san = StringListField(
        label="TLS SANs",
        multiline=True,
        help_text="Extra DNS names and addresses for the API server certificate, separated by commas or lines.",
    )

    # Errors raised by the services while saving a previous submission of the same data; see ClusterAdmin.
    service_errors: Mapping[str, Any] | None = None

    class Meta:
        model = Cluster
        fields = (
            "name",
            "description",
            "rke2_version",
            "ssh_credential",
            "registration_address",
            "cni",
            "cluster_cidr",
            "service_cidr",
            "cluster_dns",
            "cluster_domain",
            "tls_san",
            "cluster_vars",
        )
        widgets = {
            "description": forms.Textarea(attrs={"rows": 2, "cols": 60}),
            "cluster_vars": _json_widget(rows=4, cols=60),
        }

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.service_errors:
            apply_service_errors(self, {k: v for k, v in self.service_errors.items() if not is_node_error_key(k)})
        return cleaned


class NodeForm(forms.ModelForm):
    """One node of a cluster, as entered by an operator."""

    labels = StringListField(help_text="key=value, separated by commas.")
    taints = StringListField(help_text="key=value:Effect, separated by commas.")

    class Meta:
        model = Node
        fields = NODE_FIELDS
        widgets = {
            "hostname": forms.TextInput(attrs={"size": 18}),
            "internal_ip": forms.TextInput(attrs={"size": 13}),
            "external_ip": forms.TextInput(attrs={"size": 13}),
            "node_vars": _json_widget(rows=1, cols=18),
        }


class NodeInlineForm(NodeForm):
    """A node row of the cluster page. Only pending nodes (not yet installed) can be edited, except the labels and
    taints of an active node: a job applies them to the running node (``clusters.services.node_labels``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk and self.instance.status != NodeStatus.PENDING:
            for name, field in self.fields.items():
                if not (self.instance.status == NodeStatus.ACTIVE and name in ("labels", "taints")):
                    field.disabled = True


class NodeInlineFormSet(forms.BaseInlineFormSet):
    """The nodes of the cluster page. Checks what single rows cannot: names and addresses unique among the rows (which
    are all of the cluster's live nodes), one initial master, and that installed nodes are removed by a removal job.

    ``service_errors`` are errors a service raised while saving the same submission; they are placed on the rows
    they name (``nodes[i].field`` counts the new rows, in order).
    """

    def __init__(self, *args: Any, service_errors: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self.service_errors = dict(service_errors or {})
        super().__init__(*args, **kwargs)

    def _is_live(self, form: forms.BaseForm) -> bool:
        return (
            form.is_bound
            and hasattr(form, "cleaned_data")
            and not self._should_delete_form(form)
            and bool(form.instance.pk or form.has_changed())
        )

    def new_forms(self) -> list[forms.BaseForm]:
        """The rows that add nodes, in the order their specs are given to the services."""
        return [form for form in self.forms if self._is_live(form) and not form.instance.pk]

    def changed_forms(self) -> list[forms.BaseForm]:
        return [form for form in self.forms if self._is_live(form) and form.instance.pk and form.has_changed()]

    def deleted_nodes(self) -> list[Node]:
        return [form.instance for form in self.forms if form.instance.pk and self._should_delete_form(form)]

    def clean(self) -> None:
        super().clean()
        if any(self.errors):
            return
        installed = [
            form.instance.hostname
            for form in self.forms
            if form.instance.pk and self._should_delete_form(form) and form.instance.status != NodeStatus.PENDING
        ]
        if installed:
            # A deleted row's own errors do not count (Django ignores them), so this is the formset's error.
            raise ValidationError(
                f"{', '.join(installed)}: installed nodes are removed with the “Remove nodes” operation, which drains "
                "them and uninstalls RKE2 from their hosts."
            )
        seen: set[tuple[str, str]] = set()
        initial_masters = []
        for form in self.forms:
            if not self._is_live(form):
                continue
            for field in ("hostname", "internal_ip"):
                value = str(form.cleaned_data.get(field) or "")
                if value and (field, value) in seen:
                    form.add_error(field, f"{value} is already used by another node of this cluster.")
                seen.add((field, value))
            if form.cleaned_data.get("role") == NodeRole.INITIAL_MASTER:
                initial_masters.append(form)
        for form in initial_masters[1:]:
            form.add_error("role", "A cluster has at most one initial master.")
        if self.service_errors:
            self._apply_service_errors()

    def _apply_service_errors(self) -> None:
        new_forms = self.new_forms()
        general: list[str] = []
        for key, value in self.service_errors.items():
            match = _NODE_KEY_RE.match(key)
            if match and int(match["index"]) < len(new_forms):
                form = new_forms[int(match["index"])]
                field = match["field"]
                form.add_error(field if field in form.fields else None, _messages(value))
            elif is_node_error_key(key):
                general.extend(_messages(value))
        if general:
            raise ValidationError(general)


def is_node_error_key(key: str) -> bool:
    """Whether a service error is about nodes (placed on the node rows) rather than the cluster's own fields."""
    return key.startswith("nodes") or key == "hostnames"


# --- operations ----------------------------------------------------------------------------------------------------


class NodeFormSet(forms.BaseFormSet):
    """New nodes entered on the “Add nodes” page; rows are checked against each other here and against the cluster
    by the service."""

    def clean(self) -> None:
        super().clean()
        if any(self.errors):
            return
        seen: dict[tuple[str, str], int] = {}
        for index, form in enumerate(self.filled_forms()):
            for field in ("hostname", "internal_ip"):
                value = str(form.cleaned_data.get(field) or "")
                if value and (field, value) in seen:
                    form.add_error(field, f"{value} is already used by another node in this form.")
                seen[(field, value)] = index

    def add_non_form_error(self, message: str) -> None:
        self._non_form_errors = self.error_class(
            [*self.non_form_errors(), message], error_class="nonform", renderer=self.renderer
        )

    def filled_forms(self) -> list[forms.BaseForm]:
        return [form for form in self.forms if form.has_changed() and hasattr(form, "cleaned_data")]

    def apply_service_errors(self, errors: Mapping[str, Any]) -> dict[str, Any]:
        filled = self.filled_forms()
        rest: dict[str, Any] = {}
        for key, value in errors.items():
            match = _NODE_KEY_RE.match(key)
            if match and int(match["index"]) < len(filled):
                form = filled[int(match["index"])]
                field = match["field"]
                form.add_error(field if field in form.fields else None, _messages(value))
            else:
                rest[key] = value
        return rest


AddNodesFormSet = forms.formset_factory(NodeForm, formset=NodeFormSet, extra=3, max_num=100, validate_max=True)


class AddNodesForm(forms.Form):
    start_job = forms.BooleanField(
        label="Install the new nodes now",
        required=False,
        initial=True,
        help_text="Start a scale-out job that joins the new (and any other pending) nodes to the cluster.",
    )
    skip_reachability = forms.BooleanField(
        label="Skip the reachability check",
        required=False,
        help_text="Do not check first that every pair of nodes reaches the other on RKE2's ports (the hosts are "
        "still prepared by the install itself). Only for networks the check cannot see through.",
    )


class InstallForm(forms.Form):
    resume = forms.BooleanField(
        label="Resume the failed install",
        required=False,
        help_text="Start at the stage where the last install failed instead of running every stage again.",
    )
    skip_reachability = forms.BooleanField(
        label="Skip the reachability check",
        required=False,
        help_text="Do not check first that every pair of nodes reaches the other on RKE2's ports (the hosts are "
        "still prepared by the install itself). Only for networks the check cannot see through.",
    )


class RemoveNodesForm(forms.Form):
    hostnames = forms.MultipleChoiceField(widget=forms.MultipleHiddenInput)
    ungraceful = forms.BooleanField(
        label="The hosts are gone",
        required=False,
        help_text="Skip draining and uninstalling on the hosts; only remove the nodes from the cluster.",
    )
    snapshot = forms.BooleanField(
        label="Take an etcd snapshot first",
        required=False,
        initial=True,
        help_text="Before a server is removed, every server takes a pre-removal etcd snapshot.",
    )

    def __init__(self, *args: Any, choices: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["hostnames"].choices = [(name, name) for name in choices]


class UpgradeForm(forms.Form):
    target_version = forms.CharField(
        label="Target RKE2 version",
        max_length=64,
        validators=[validators.validate_rke2_version],
        widget=forms.TextInput(attrs={"placeholder": "v1.32.1+rke2r1", "size": 24}),
    )
    allow_downgrade = forms.BooleanField(required=False, help_text="Allow a version older than the current one.")
    allow_minor_skip = forms.BooleanField(
        label="Allow skipping a minor version",
        required=False,
        help_text="Kubernetes supports upgrading one minor version at a time.",
    )
    snapshot = forms.BooleanField(
        label="Take an etcd snapshot first",
        required=False,
        initial=True,
        help_text="Every server takes a pre-upgrade etcd snapshot before the first node is upgraded.",
    )
    workers_batch = forms.CharField(
        label="Workers at a time",
        required=False,
        max_length=8,
        help_text="How many workers are upgraded together: a number or a percentage such as 25%. Empty: the default.",
    )

    def clean_workers_batch(self) -> Any:
        value = self.cleaned_data["workers_batch"].strip()
        if not value:
            return None
        if re.fullmatch(r"[1-9]\d*", value):
            return int(value)
        if re.fullmatch(r"([1-9]\d?|100)%", value):
            return value
        raise ValidationError("Enter a number of workers or a percentage between 1% and 100%.")

    def job_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "target_version": self.cleaned_data["target_version"],
            "allow_downgrade": self.cleaned_data["allow_downgrade"],
            "allow_minor_skip": self.cleaned_data["allow_minor_skip"],
            "snapshot": self.cleaned_data["snapshot"],
        }
        if self.cleaned_data.get("workers_batch") is not None:
            params["workers_batch"] = self.cleaned_data["workers_batch"]
        return params


class UninstallForm(forms.Form):
    confirm = forms.CharField(
        label="Cluster name",
        max_length=63,
        widget=forms.TextInput(attrs={"autocomplete": "off", "size": 30}),
        help_text="Type the cluster's name to confirm.",
    )


# --- SSH credentials -----------------------------------------------------------------------------------------------


class SecretTextarea(forms.Textarea):
    """A text area for a secret: never prefilled, its text hidden on screen as it is typed."""

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        base = {"rows": 6, "cols": 64, "class": "rke2-secret-input", "autocomplete": "off", "spellcheck": "false"}
        super().__init__({**base, **(attrs or {})})

    def format_value(self, value: Any) -> None:
        return None


class SSHCredentialForm(forms.ModelForm):
    """An SSH credential. The private key and passphrase are write-only: they are never shown, and leaving the key
    empty when editing keeps the stored key and passphrase."""

    # Not model fields of the form (see Meta.fields, which must not list them): an empty input must not overwrite
    # the stored secret.
    private_key = forms.CharField(
        required=False,
        strip=False,
        widget=SecretTextarea(),
        help_text="OpenSSH or PEM private key. It is stored encrypted and never shown again.",
    )
    passphrase = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Passphrase of the private key, if it has one.",
    )

    class Meta:
        model = SSHCredential
        fields = ("name", "username", "port", "become", "known_hosts")
        widgets = {"known_hosts": forms.Textarea(attrs={"rows": 3, "cols": 64})}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["private_key"].label = "New private key"
            self.fields[
                "private_key"
            ].help_text = "A key is stored. Leave empty to keep it; a new key replaces it (enter its passphrase too)."
        else:
            self.fields["private_key"].required = True

    service_errors: Mapping[str, Any] | None = None

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        key = cleaned.get("private_key") or ""
        passphrase = cleaned.get("passphrase") or ""
        if key.strip():
            self.instance.private_key = Secret(key)
            self.instance.passphrase = Secret(passphrase)
        elif passphrase and self.instance.pk:
            self.add_error("passphrase", "Enter the private key this passphrase belongs to.")
        if self.service_errors:
            apply_service_errors(self, self.service_errors)
        return cleaned

    def service_data(self, *, only_changed: bool) -> dict[str, Any]:
        """The values as ``credential_create``/``credential_update`` take them; secrets only when a key was given."""
        data = {
            field: self.cleaned_data[field]
            for field in self.Meta.fields
            if not only_changed or field in self.changed_data
        }
        if self.key_changed:
            data["private_key"] = self.cleaned_data["private_key"]
            data["passphrase"] = self.cleaned_data.get("passphrase") or ""
        return data

    @property
    def key_changed(self) -> bool:
        return bool((self.cleaned_data.get("private_key") or "").strip())
