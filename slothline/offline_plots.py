"""The HTML template that makes `dvc plots show` render without a network connection.

DVC's page loads Vega, Vega-Lite and Vega-Embed from a CDN, so offline it is blank. This writes
.dvc/plots/offline.html (`plots.html_template` in .dvc/config points to it): DVC's page with those
libraries inlined, from vl-convert's bundle at the Vega-Lite version DVC's templates are written for.
Rerun it to update the libraries:

    python -m slothline.offline_plots
"""

from pathlib import Path

TEMPLATE = Path(".dvc/plots/offline.html")
VEGA_LITE = "5.21"  # DVC's plot templates are Vega-Lite 5 specs

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- Vega {vega}, Vega-Lite {vega_lite}, Vega-Embed {vega_embed}, inlined by slothline.offline_plots -->
    <script type="text/javascript">
BUNDLE
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def offline_page() -> str:
    """DVC's page template with the libraries inlined (DVC fills {refresh_tag} and {plot_divs})."""
    import vl_convert

    versions = {"{vega}": vl_convert.get_vega_version(), "{vega_lite}": VEGA_LITE,
                "{vega_embed}": vl_convert.get_vega_embed_version()}
    page = PAGE
    for placeholder, version in versions.items():
        page = page.replace(placeholder, version)
    return page.replace("BUNDLE", vl_convert.javascript_bundle(vl_version=VEGA_LITE))


if __name__ == "__main__":
    TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
    TEMPLATE.write_text(offline_page())
    print(f"{TEMPLATE} written; .dvc/config: plots.html_template = {TEMPLATE.relative_to('.dvc')}")
