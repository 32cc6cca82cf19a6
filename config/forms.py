from __future__ import annotations

from django import forms


class StyledForm(forms.Form):
    """A form whose widgets carry Bootstrap's classes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            widget = field.widget
            if isinstance(widget, (forms.CheckboxInput, forms.RadioSelect)):
                continue
            css = "form-select" if isinstance(widget, forms.Select) else "form-control"
            widget.attrs.setdefault("class", css)


class ModelMultipleIdsField(forms.ModelMultipleChoiceField):
    """A choice of several rows by id that refuses an id beyond the database's integers as it refuses any
    other unknown id: Django checks each id alone (where a number that large matches nothing) but then
    looks them all up together, which SQLite cannot do with such a number (a 500)."""

    LARGEST_ID = 2**63 - 1

    def _check_values(self, value):
        for pk in value:
            if str(pk).isdigit() and int(pk) > self.LARGEST_ID:
                raise forms.ValidationError(
                    self.error_messages["invalid_choice"], code="invalid_choice", params={"value": pk}
                )
        return super()._check_values(value)
