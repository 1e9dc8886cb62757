"""Model and dataset card templates (Jinja2, rendered by ``roi_attention.hub.cards``)."""
