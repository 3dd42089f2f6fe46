"""Deploying a project's declarations to systems outside keel: DAG files for Airflow (`airflow.py`)."""
