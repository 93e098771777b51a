from schemas import export


def test_committed_json_schemas_are_current():
    stale = export.stale()
    assert not stale, f"stale JSON Schema files {stale}: run `tokenpools schemas export`"


def test_schemas_name_the_kinds():
    rendered = export.render()
    assert set(rendered) == {f"{name}.json" for name in export.MODELS}
    assert '"TokenPool"' in rendered["TokenPool.json"]
