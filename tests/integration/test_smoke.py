from support import Stack


def test_task_runs_end_to_end(stack: Stack) -> None:
    task = stack.submit("add", {"a": 2, "b": 3})
    assert task["status"] == "pending"
    done = stack.wait_status(task["id"], "completed")
    assert done["result"] == {"sum": 5}
