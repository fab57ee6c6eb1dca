"""The HTTP edge: WhaleFall's capacity trigger and task-run endpoints as a Flask blueprint."""
