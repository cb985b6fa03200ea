"""mlflow-ops: the Invoke collections (tasks/<command>.py) and their library (tasks/libs/)."""
