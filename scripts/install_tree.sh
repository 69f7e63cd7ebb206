# Sourced by the GPU scripts: make `import ecm_edge` work for this tree on a machine that has the dependencies
# but may not reach an index. An editable install without dependencies or build isolation; where even that
# fails, a package folder of links to the tree on PYTHONPATH (the layout pyproject.toml's package-dir maps).
echo "== install"
if ! python -m pip install -e . --no-deps --no-build-isolation -q; then
    echo "editable install failed; running from the source tree instead" >&2
    site="$(mktemp -d)"
    mkdir "$site/ecm_edge"
    for entry in ecm_edge/*; do ln -s "$PWD/$entry" "$site/ecm_edge/"; done  # train, export, ... are links too
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
