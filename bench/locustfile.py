"""Locust load: 70 % POST /jobs, 30 % GET /jobs/{id} of jobs this user submitted (closed loop)."""

import random

from locust import FastHttpUser, task

BODY = {"name": "TestUser", "email": "test@mail.com", "password": "pass"}


class Client(FastHttpUser):
    """A client that submits jobs and polls the ones it submitted, without pause."""

    def on_start(self) -> None:
        self.request_ids: list[str] = []

    @task(7)
    def submit(self) -> None:
        with self.client.post("/jobs", json=BODY, name="POST /jobs", catch_response=True) as response:
            if response.status_code != 202:
                response.failure(f"status {response.status_code}")
                return
            self.request_ids = (self.request_ids + [response.json()["request_id"]])[-100:]

    @task(3)
    def poll(self) -> None:
        if not self.request_ids:
            return self.submit()
        self.client.get(f"/jobs/{random.choice(self.request_ids)}", name="GET /jobs/{id}")
