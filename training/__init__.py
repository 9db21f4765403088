"""charlm's offline half: data, nets, trainer, diagnostics and export (torch)."""
