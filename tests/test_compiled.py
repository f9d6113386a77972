"""perf.compile: the compiled training step (student forward and backward, the teacher's evaluations in
distillation) trains the same weights as eager to float tolerance, and a compiler failure falls back to eager with
a warning."""

import pytest
import torch

from progdistill.build import load_denoiser
from progdistill.config import load_config
from progdistill import compiling as compiled_module
from progdistill.compiling import CompiledOrEager
from progdistill.training.rounds import distill
from progdistill.training.teacher import train_teacher

TINY = ["model.hidden=16", "model.depth=1", "model.emb_dim=8", "data.size=256", "train.batch_size=32",
        "train.steps=6", "train.warmup=2", "train.checkpoint_every=100", "data.workers=0", 'device="cpu"',
        "distill.start_steps=2", "distill.batch_size=32", "distill.updates_per_round=4",
        "distill.final_updates_per_round=0", "distill.log_samples=0"]


def _break_the_compiler(monkeypatch) -> None:
    """torch.compile returns a graph that raises on its first call, as a failing backend does."""
    def broken_compile(fn, **options):
        def fails(*args, **kwargs):
            raise RuntimeError("the backend could not lower this graph\nmore detail")
        return fails

    monkeypatch.setattr(compiled_module.torch, "compile", broken_compile)


def test_a_compiler_failure_falls_back_to_eager_with_a_warning(monkeypatch, capsys):
    _break_the_compiler(monkeypatch)
    net = torch.nn.Linear(3, 2)
    step = CompiledOrEager(net, "the test network")
    x = torch.randn(4, 3)
    assert torch.equal(step(x), net(x))
    err = capsys.readouterr().err
    assert "torch.compile of the test network failed (RuntimeError: the backend could not lower this graph)" in err
    assert "running it eager" in err
    assert torch.equal(step(x), net(x)) and capsys.readouterr().err == ""  # warned once, eager from then on


def test_an_error_of_the_network_itself_is_raised_unchanged(monkeypatch):
    monkeypatch.setattr(compiled_module.torch, "compile", lambda fn, **options: fn)
    step = CompiledOrEager(torch.nn.Linear(3, 2), "the test network")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        step(torch.randn(4, 5))  # eager raises it too, as it would without compile


@pytest.fixture
def compiled_graphs(monkeypatch):
    """The CompiledOrEager wrappers made during a test; `ran()` checks that there were some and that every one ran
    its compiled graph (a compiler failure falls back to eager, which would make a compiled-vs-eager test
    compare eager with eager)."""
    made = []
    original = CompiledOrEager.__init__

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(CompiledOrEager, "__init__", record)

    def ran() -> None:
        assert made, "nothing was compiled"
        fell_back = [c.what for c in made if c.compiled is None or not c.checked]
        assert not fell_back, f"these fell back to eager or never ran compiled: {fell_back}"

    return ran


def test_the_compiled_graphs_check_fails_on_a_fallback(monkeypatch, compiled_graphs):
    _break_the_compiler(monkeypatch)
    CompiledOrEager(torch.nn.Linear(3, 2), "the test network")(torch.randn(4, 3))
    with pytest.raises(AssertionError, match="fell back to eager"):
        compiled_graphs()


def _weights(stem):
    return torch.cat([p.flatten() for p in load_denoiser(stem)[0].parameters()])


@pytest.mark.filterwarnings("ignore")
def test_compiled_and_eager_training_agree_for_the_teacher_and_a_round(tmp_path, compiled_graphs):
    stems = {}
    for compile_ in ("false", "true"):
        cfg = load_config("toy2d", TINY + [f"perf.compile={compile_}"])
        out = tmp_path / compile_
        teacher = train_teacher(cfg, out, progress=False)
        stems[compile_] = (teacher, distill(teacher, out, cfg, progress=False)[-1])
    for eager, compiled in zip(stems["false"], stems["true"]):
        a, b = _weights(eager), _weights(compiled)
        assert not torch.equal(_weights(stems["false"][0]), _weights(stems["false"][1]))  # the round trained
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)  # float rounding of fused kernels only
    compiled_graphs()  # the teacher's step, the round's student step and its teacher all ran compiled


@pytest.mark.filterwarnings("ignore")
def test_compiled_sampling_matches_eager(tmp_path, compiled_graphs):
    from progdistill.build import schedule_of
    from progdistill.sampling import generate

    cfg = load_config("toy2d", TINY)
    teacher, _, _ = load_denoiser(train_teacher(cfg, tmp_path, progress=False))
    kwargs = dict(seed=3, batch_size=64)
    eager = generate(teacher, schedule_of(teacher.spec), 4, 64, (2,), **kwargs)
    compiled = generate(teacher, schedule_of(teacher.spec), 4, 64, (2,), compile=True, **kwargs)
    compiled_graphs()
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
