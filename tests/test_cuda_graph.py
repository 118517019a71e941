"""CUDA-graphed training steps (training.engine.cuda_graph): the choice and its refusals on any machine,
the graph itself on CUDA only (the GPU session runs this file with `--noconftest`: no MLflow there).
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from cifar_fixtures import write_fake_cifar10
from training.cnn.experiment import cnn_experiment, plan_run
from training.engine.execution import ExecutionPolicy
from training.engine.cuda_graph import GraphedTrainStep, make_capturable, uncapturable_state_dict
from training.trainer import ClassifierTrainer

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA = torch.device("cuda")


# ------------------------------------------------------------------ the choice (any machine)
@pytest.mark.parametrize("option, device, schedule, expected", [
    ("auto", "cuda", "none", True),                  # exp1: constant lr on a GPU
    ("auto", "cpu", "none", False),
    ("auto", "cuda", "linear_warmup_decay", False),  # exp2's schedule
    ("off", "cuda", "none", False),
    ("on", "cuda", "none", True),
])
def test_execution_policy_chooses_cuda_graphs(option, device, schedule, expected):
    assert ExecutionPolicy.decide(device, cuda_graphs=option, lr_schedule=schedule).cuda_graphs is expected


@pytest.mark.parametrize("device, schedule, message", [
    ("cpu", "none", r"device 'cpu' is not CUDA"),
    ("cuda", "cosine", r"lr_schedule='cosine' changes the lr"),
])
def test_cuda_graphs_on_refused_where_it_cannot_work(device, schedule, message):
    with pytest.raises(ValueError, match=r"cuda_graphs='on' cannot work here: .*" + message):
        ExecutionPolicy.decide(device, cuda_graphs="on", lr_schedule=schedule)


def test_execution_policy_decides_precision_and_layout_from_the_device():
    cpu = ExecutionPolicy.decide("cpu")
    assert cpu.amp_dtype is None and cpu.channels_last and not cpu.cuda_graphs and not cpu.cudnn_benchmark
    cuda = ExecutionPolicy.decide("cuda", amp="fp16", channels_last="off")
    assert cuda.amp_dtype is torch.float16 and not cuda.channels_last and cuda.cudnn_benchmark
    assert ExecutionPolicy.decide("cuda").amp_dtype is torch.bfloat16


def test_cuda_graphs_bad_value():
    with pytest.raises(ValueError, match=r"cuda_graphs must be one of \['auto', 'on', 'off'\], got 'yes'"):
        plan_run(dict(run_name="exp1_1", cuda_graphs="yes"))


def test_cuda_graphs_is_not_part_of_the_config_hash():
    recipe, options = plan_run(dict(run_name="exp1_1", seed=1, batches=None, cuda_graphs="off"))
    assert options.cuda_graphs == "off" and "cuda_graphs" not in recipe.identity()
    assert recipe.config_hash() == plan_run(dict(run_name="exp1_1", seed=1, batches=None))[0].config_hash()


def test_cnn_experiment_refuses_on_before_reading_data(tmp_path):
    """The refusal comes first: the data folder does not even exist."""
    with pytest.raises(ValueError, match=r"cuda_graphs='on'.*device 'cpu' is not CUDA"):
        cnn_experiment("exp1_1", out_dir=str(tmp_path), device="cpu", batches=None, epochs=1,
                       filters_per_layer=[8], layers_per_block=1, pool_every=1, hidden_dims=[16],
                       data_dir=str(tmp_path / "missing"), tracking=False, cuda_graphs="on")


def test_trainer_refuses_a_graph_on_cpu_or_with_a_scheduler():
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"cuda_graph=True needs a CUDA device, got 'cpu'"):
        ClassifierTrainer(model, nn.CrossEntropyLoss(), opt, device="cpu", cuda_graph=True)
    if torch.cuda.is_available():
        sched = torch.optim.lr_scheduler.StepLR(opt, 1)
        with pytest.raises(ValueError, match=r"constant learning rate.*StepLR"):
            ClassifierTrainer(model, nn.CrossEntropyLoss(), opt, device="cuda", scheduler=sched, cuda_graph=True)


def test_checkpoint_of_a_capturable_optimizer_loads_on_cpu():
    """A graphed run's Adam has capturable=True, which the CPU refuses; its checkpoint stores it off."""
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    make_capturable(opt)
    assert opt.param_groups[0]["capturable"] and opt.defaults["capturable"]

    def step_with(state):
        fresh = torch.optim.Adam(model.parameters())
        fresh.load_state_dict(state)
        model(torch.randn(4, 3)).sum().backward()
        fresh.step()
        return fresh

    with pytest.raises(AssertionError, match="capturable=True"):  # what the stored flag would do
        step_with(opt.state_dict())
    fresh = step_with(uncapturable_state_dict(opt))
    assert not fresh.param_groups[0]["capturable"] and opt.param_groups[0]["capturable"]  # the original is untouched
    assert fresh.state[model.weight]["step"].item() == 2


def test_graph_warmup_must_create_the_optimizer_state():
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        GraphedTrainStep(lambda X, y: (X, y), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), warmup=0)


# ------------------------------------------------------------------ the graph (CUDA)
def _batches(n_batches, bs, last, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = [bs] * n_batches + ([last] if last else [])
    return [(torch.randn(b, 3, 16, 16, generator=g).to(CUDA, memory_format=torch.channels_last),
             torch.randint(0, 10, (b,), generator=g).to(CUDA)) for b in sizes]


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10)).to(CUDA, memory_format=torch.channels_last)


def _trainer(model, graph, optimizer="adam", amp_dtype=None, grad_clip=None):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4) if optimizer == "adam" else \
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    return ClassifierTrainer(model, nn.CrossEntropyLoss(), opt, device="cuda", amp_dtype=amp_dtype,
                             grad_clip=grad_clip, cuda_graph=graph)


@needs_cuda
@pytest.mark.parametrize("optimizer, grad_clip", [("adam", None), ("sgd", 1.0)])
def test_graphed_steps_train_exactly_as_eager_ones(optimizer, grad_clip, monkeypatch):
    """Same model, same batches (a short last batch included), two epochs: the graphed trainer ends
    with the eager trainer's weights, losses and accuracies."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    batches = _batches(9, 32, last=20)
    eager_model = _cnn()
    graph_model = copy.deepcopy(eager_model)
    eager, graphed = _trainer(eager_model, False, optimizer, grad_clip=grad_clip), \
        _trainer(graph_model, True, optimizer, grad_clip=grad_clip)
    for _ in range(2):
        e, g = eager.train_epoch(batches, verbose=False), graphed.train_epoch(batches, verbose=False)
        torch.testing.assert_close(torch.tensor(g.losses), torch.tensor(e.losses), rtol=1e-4, atol=1e-5)
        assert g.accuracy == pytest.approx(e.accuracy, abs=100 / 200)
    for pe, pg in zip(eager_model.parameters(), graph_model.parameters()):
        torch.testing.assert_close(pg, pe, rtol=1e-4, atol=1e-5)
    step = graphed.graphed_step
    assert step.fallback is None and step.graph is not None
    assert step.replays == 2 * 9 - 3 and step.eager_steps == 3 + 2  # 3 warm-ups, then one short batch per epoch


@needs_cuda
def test_graphed_bf16_batchnorm_dropout_model_learns():
    """Autocast (its cache off), BN statistics and dropout masks live inside the graph: it must still learn."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Dropout(0.1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).to(CUDA)
    trainer = ClassifierTrainer(model, nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), lr=1e-2),
                                device="cuda", amp_dtype=torch.bfloat16, cuda_graph=True)
    x = torch.randn(64, 3, 16, 16, device=CUDA)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()  # learnable from the mean colour
    batches = [(x, y)] * 10
    bn = model[1]
    first = trainer.train_epoch(batches, verbose=False)
    for _ in range(5):
        last = trainer.train_epoch(batches, verbose=False)
    assert trainer.graphed_step.fallback is None and trainer.graphed_step.replays == 6 * 10 - 3
    assert last.losses[-1] < 0.5 * first.losses[0]
    assert int(bn.num_batches_tracked) == 60  # every replay updated the running statistics
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


@needs_cuda
def test_resume_recaptures_and_checkpoints_load_on_cpu():
    batches = _batches(6, 32, last=0)
    model = _cnn()
    trainer = _trainer(model, True)
    trainer.train_epoch(batches, verbose=False)
    state = trainer.state_dict()
    assert state["optimizer"]["param_groups"][0]["capturable"] is False
    trainer.load_state_dict(state)  # new optimizer state tensors: the old graph must not be replayed
    assert trainer.graphed_step.graph is None
    before = trainer.graphed_step.replays
    trainer.train_epoch(batches, verbose=False)
    assert trainer.graphed_step.replays == before + 6 - 3
    cpu_model = _cnn().to(CPU)
    cpu_trainer = ClassifierTrainer(cpu_model, nn.CrossEntropyLoss(), torch.optim.Adam(cpu_model.parameters()),
                                    device="cpu")
    cpu_trainer.load_state_dict(torch.utils._pytree.tree_map(
        lambda t: t.cpu() if isinstance(t, torch.Tensor) else t, trainer.state_dict()))
    cpu_trainer.train_epoch([(x.cpu(), y.cpu()) for x, y in batches], verbose=False)


@needs_cuda
def test_a_step_that_syncs_with_the_host_stays_eager():
    """A host sync in the step (here .item()) cannot be captured: the last warm-up finds it (CUDA's
    sync debug mode), no capture is tried, and training goes on eagerly, each batch trained once."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 64), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(64, 10)).to(CUDA)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    steps = []

    def step(X, y):
        loss = nn.functional.cross_entropy(model(X), y)
        loss.backward()
        opt.step()
        steps.append(loss.item())  # a sync: not allowed in a graph
        return loss.detach(), torch.zeros((), device=X.device)

    before = [p.detach().clone() for p in model.parameters()]
    graphed = GraphedTrainStep(step, opt, warmup=2)
    batches = _batches(5, 32, last=0) * 3
    with pytest.warns(UserWarning, match=r"CUDA graphs: the training step synchronises with the host "
                                         r"\(called a synchronizing CUDA operation\)"):
        losses = [graphed(X, y)[0].item() for X, y in batches]
    assert graphed.fallback and graphed.graph is None and graphed.replays == 0
    assert graphed.eager_steps == len(steps) == len(batches) == 15  # nothing trained twice
    assert all(torch.isfinite(torch.tensor(losses))) and losses == pytest.approx(steps)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    torch.cuda.empty_cache()  # the allocator was never left in capture mode
    x = torch.randn(1024, 1024, device=CUDA)
    assert torch.isfinite((x @ x).sum())


@needs_cuda
def test_cnn_experiment_graphs_exp1_steps_by_default(tmp_path):
    data = write_fake_cifar10(tmp_path / "data", n_train_per_batch=120, n_test=200)
    kw = dict(out_dir=str(tmp_path / "out"), seed=42, device="cuda", bs_train=64, batches=None, epochs=2,
              early_stopping=None, filters_per_layer=[16], layers_per_block=1, pool_every=1, hidden_dims=[32],
              data_dir=str(data), n_train=500, n_valid=100, allow_small=True, tracking=False, log_model=False,
              checkpoint_dir=str(tmp_path / "ckpt"))
    with open(cnn_experiment("exp1_1", **kw)) as f:
        graphed = json.load(f)
    # its own checkpoint folder (and restart): cuda_graphs is not in the config hash, so the eager run
    # would otherwise resume the graphed run's finished state and train nothing
    with open(cnn_experiment("exp1_1", **{**kw, "out_dir": str(tmp_path / "eager"), "cuda_graphs": "off",
                                          "checkpoint_dir": str(tmp_path / "ckpt-eager"), "restart": True})) as f:
        eager = json.load(f)
    assert graphed["execution"]["cuda_graph"] is True and graphed["execution"]["cuda_graph_replays"] == 2 * 7 - 3
    assert eager["execution"] == {"cuda_graph": False}
    # trained, not resumed (a resume would replay the graphed run's own epoch timings)
    assert [e["epoch_time_s"] for e in eager["epochs"]] != [e["epoch_time_s"] for e in graphed["epochs"]]
    assert graphed["final_test"]["test_acc"] == pytest.approx(eager["final_test"]["test_acc"], abs=5.0)
