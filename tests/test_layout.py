"""The layout rules of the design: gio_core is numerics only; jobs/ is layered, without cycles.

The layers of ``jobs``, from the bottom up (a module imports only modules of lower layers, or of
its own folder; function-local imports count the same as any other):

| rank | folders / modules | role |
| --- | --- | --- |
| 0 | ``jobs`` (the package itself: its version; the API's names, loaded by name on first use) | |
| 1 | ``jobs.common`` | errors, failure points, log, frame helpers, JAX runtime |
| 2 | ``jobs.config`` | the config sections, loader and checks |
| 3 | ``jobs.io`` | session, sources, tables, encoders, demo data |
| 4 | ``jobs.state`` | fingerprints and plans, the stage log, stored outputs, checked inputs |
| 4.5 | ``jobs.stages.base`` | the Stage protocol and its lifecycle, ``run_stage`` |
| 5 | ``jobs.stages``, ``jobs.datamodels`` | one module per stage; the datamodels actions |
| 6 | ``jobs.pipeline``, ``jobs.runner``, ``jobs.planning`` | the registry, the run, a command; a plan |
| 6.5 | ``jobs.api`` | the Python API: DataFrames in and out, on the caller's session |
| 6.75 | ``jobs.ml`` | the Spark ML estimators, on the Python API |
| 7 | ``jobs.tools`` | demo, package, cluster, compat, the config reference |
| 8 | ``jobs.cli`` | the command line |
| 9 | ``jobs.submit`` | the spark-submit entry |

No stage imports another stage (what one needs of another comes through the stage log and the
stored tables, or as an argument from :mod:`jobs.pipeline`), and the datamodels actions import
no stage.
"""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = {"pyspark", "delta", "sentence_transformers", "torch", "requests", "urllib", "socket"}
FORBIDDEN_CALLS = {"open", "print"}
# gio_core modules allowed one of the above, each with the reason.
ALLOWED = {
    ("gaf_torch.py", "torch"): "the PyTorch-compatible GAF: the reference package is PyTorch's",
    ("gaf_torch.py", "print"): "the reference's verbose lines, printed as it prints them",
    ("imnn.py", "print"): "the reference's IMNN(...) says which class it built when verbose",
    ("imnn_lfi.py", "print"): "the reference's ABC says how many it accepted when verbose",
}

RANKS = {"jobs": 0, "jobs.common": 1, "jobs.config": 2, "jobs.io": 3, "jobs.state": 4,
         "jobs.stages.base": 4.5, "jobs.stages": 5, "jobs.datamodels": 5, "jobs.pipeline": 6,
         "jobs.runner": 6, "jobs.planning": 6, "jobs.api": 6.5, "jobs.ml": 6.75, "jobs.tools": 7,
         "jobs.cli": 8, "jobs.submit": 9}

# Function-local imports of the project's own modules, each with the reason it is one.
LOCAL_IMPORTS = {
    ("jobs.datamodels.example", "jobs.common.errors"):
        "the example's module is imported by every datamodels task, which needs no Spark",
    ("jobs.datamodels.example", "jobs.io.tables"):
        "the example's module is imported by every datamodels task, which needs no Spark",
}


def test_gio_core_imports_no_spark_and_does_no_io():
    for path in (ROOT / "gio_core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                names = []
            for name in names:
                top = name.split(".")[0]
                assert top not in FORBIDDEN or (path.name, top) in ALLOWED, \
                    f"{path.name} imports {name}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in FORBIDDEN_CALLS or \
                    (path.name, node.func.id) in ALLOWED, f"{path.name} calls {node.func.id}()"


def _modules() -> dict:
    """``{module name: path}`` of every module of ``jobs``."""
    out = {}
    for path in (ROOT / "jobs").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(modules: dict) -> dict:
    """``{module: [(imported project module, function-local?)]}``, relative imports resolved;
    ``from jobs.x import y`` counts as importing ``jobs.x.y`` where that is a module."""
    return {name: _imports_of(name, path, modules) for name, path in modules.items()}


def _imports_of(name: str, path: pathlib.Path, modules: dict) -> list:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: list = []

    def visit(node, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                ast.Lambda))
            targets = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[:len(package.split(".")) - child.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in child.names]
            for target in targets:
                if target in modules and target != name:
                    found.append((target, inner))
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return found


def _rank(module: str) -> tuple[int, str]:
    """The module's layer rank and the folder (or module) that ranks it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in RANKS:
            return RANKS[key], key
    raise AssertionError(f"{module} is in no layer: add it to RANKS in tests/test_layout.py")


def test_every_jobs_module_imports_only_lower_layers():
    modules = _modules()
    wrong = []
    for module, targets in _imports(modules).items():
        rank, unit = _rank(module)
        for target, _ in targets:
            target_rank, target_unit = _rank(target)
            same_folder = unit == target_unit and unit != "jobs"
            if same_folder:
                if unit == "jobs.stages":
                    wrong.append(f"{module} imports {target}: a stage imports no other stage")
                continue
            if target_rank >= rank:
                wrong.append(f"{module} (layer {rank}) imports {target} (layer {target_rank})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_in_jobs_counting_function_local_imports():
    modules = _modules()
    graph = {m: {t for t, _ in ts} for m, ts in _imports(modules).items()}
    # A package's __init__ is imported with each of its modules: an import of jobs.x.y also
    # runs jobs.x (and jobs), so those are edges too.
    for m in list(graph):
        parts = m.split(".")
        for n in range(1, len(parts)):
            parent = ".".join(parts[:n])
            if parent in graph and parent != m:
                graph[m].add(parent)
    index, low, on, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def strongly_connected(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongly_connected(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongly_connected(v)
    assert not cycles, f"modules that import each other in a circle: {cycles}"


def test_function_local_imports_of_project_modules_are_the_listed_ones():
    modules = _modules()
    local = {(m, t) for m, ts in _imports(modules).items() for t, inner in ts if inner}
    unlisted = sorted(local - set(LOCAL_IMPORTS))
    assert not unlisted, ("function-local imports of jobs modules; import them at the top, or "
                          f"list them with their reason in LOCAL_IMPORTS: {unlisted}")
    stale = sorted(set(LOCAL_IMPORTS) - local)
    assert not stale, f"LOCAL_IMPORTS lists imports that are gone: {stale}"


def test_the_layout_rules_catch_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above fail on a tree that breaks them (so they can fail at all)."""
    jobs = tmp_path / "jobs"
    (jobs / "common").mkdir(parents=True)
    (jobs / "stages").mkdir()
    (jobs / "__init__.py").write_text("")
    (jobs / "common" / "__init__.py").write_text("")
    (jobs / "stages" / "__init__.py").write_text("")
    (jobs / "common" / "log.py").write_text("def f():\n    from jobs.stages import embed\n")
    (jobs / "stages" / "embed.py").write_text("from jobs.common import log\n")
    (jobs / "stages" / "quantize.py").write_text("from jobs.stages.embed import x\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    edges = _imports(_modules())
    assert ("jobs.stages.embed", True) in edges["jobs.common.log"]
    for check in (test_every_jobs_module_imports_only_lower_layers,
                  test_no_import_cycles_in_jobs_counting_function_local_imports,
                  test_function_local_imports_of_project_modules_are_the_listed_ones):
        try:
            check()
        except AssertionError as err:
            assert "jobs.stages.embed" in str(err) or "jobs.common.log" in str(err), err
        else:
            raise AssertionError(f"{check.__name__} passed on a broken tree")
