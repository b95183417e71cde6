"""Running the trained pipeline in production: the Kubeflow Pipelines client (submit, schedule, list runs) and the
watch (served acceptance against the champion's; retraining when it drops)."""
