"""Progress of long work (report/progress.py): lines pass through, counts in them move the bar."""

import io
import sys

from rich.console import Console

from autoconf.report.progress import Follow


def terminal() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=120), buffer


def test_counts_in_lines_move_the_bar_and_every_line_is_printed():
    console, buffer = terminal()
    with Follow(console, "training") as follow:
        follow.line("autoconf: tp 1 pp 2 dp 2")
        follow.line("step 3/20 loss 9.1234 lr 1e-04")
        task = follow._progress.tasks[0]
        assert (task.completed, task.total) == (3, 20)
        follow.line("[2/8] tp2 pp2: predicted 0.1 s")  # validate announces run 2 when it starts
        assert (task.completed, task.total) == (2, 8)
    text = buffer.getvalue()
    assert "step 3/20 loss 9.1234" in text and "autoconf: tp 1 pp 2 dp 2" in text


def test_validate_counts_runs_done():
    console, _ = terminal()
    with Follow(console, "validating", done_offset=1) as follow:
        follow.line("[3/8] tp1 pp4: predicted 0.2 s, running 8 steps")
        assert follow._progress.tasks[0].completed == 2


def test_off_a_terminal_lines_print_unchanged(capsys):
    console = Console(file=io.StringIO(), force_terminal=False)
    with Follow(console, "training") as follow:
        assert not follow.live
        follow.line("step 1/2 loss 1.0\n")
    assert capsys.readouterr().out == "step 1/2 loss 1.0\n"


def test_launcher_relays_the_child_output_under_the_bar():
    """run_supervised with a Follow: the child's stdout lines reach the console and move the bar to the end."""
    from autoconf.execute.launch import run_supervised

    console, buffer = terminal()
    child = [sys.executable, "-c", "print('step 1/2 loss 2.0', flush=True); print('step 2/2 loss 1.0')"]
    with Follow(console, "training") as follow:
        assert run_supervised(child, env=None, follow=follow) == 0
        task = follow._progress.tasks[0]
        assert (task.completed, task.total) == (2, 2)
    assert "step 2/2 loss 1.0" in buffer.getvalue()
