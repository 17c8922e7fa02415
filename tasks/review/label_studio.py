"""Label Studio's HTTP API, the part the review gates use: create a project
with a labelling config, import tasks, export them with their annotations
(and post an annotation, as a reviewer's browser does).

The URL and the token come from the environment (`review.label_studio`
names the variables); the token never reaches the store, the logs or an
error message.  Both kinds of token work: a personal access token (a JWT)
is exchanged at `/api/token/refresh/` for short-lived access tokens
(`Authorization: Bearer`), renewed on a 401; a legacy token is sent as
`Authorization: Token`.
"""

from __future__ import annotations

import os

import httpx

from sftmill.core.errors import RecipeError
from sftmill.core.sections import LabelStudio as LabelStudioConfig

SCALE_LABELS = {"style": "Style", "domain_fit": "Domain fit", "context_relevance": "Context relevance"}


class LabelStudioError(RuntimeError):
    """Label Studio refused or could not be reached (one line, no token).
    `unreachable`: no answer, or a server error (5xx) — a gate waits for it
    to come back; a refusal (4xx: a bad token, say) is the recipe's problem."""

    def __init__(self, message: str, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


def _decision(to_name: str) -> str:
    """The accept / reject / edit choice, and the note box, of every task."""
    return f"""  <Choices name="decision" toName="{to_name}" choice="single-radio" required="true" showInline="true">
    <Choice value="accept"/>
    <Choice value="reject"/>
    <Choice value="edit"/>
  </Choices>"""


def _note(to_name: str) -> str:
    return (f'  <TextArea name="note" toName="{to_name}" rows="1" maxSubmissions="1" editable="true" '
            'placeholder="Note (optional)"/>')


def prompt_config() -> str:
    """A task per prompt: accept / reject / edit, an edited text, a note."""
    return f"""<View>
  <Header value="Prompt ($subdomain, $task_type)"/>
  <Text name="prompt" value="$prompt"/>
{_decision("prompt")}
  <Header value="Edited prompt (when the decision is edit)" size="6"/>
  <TextArea name="edited_prompt" toName="prompt" rows="3" maxSubmissions="1" editable="true"/>
{_note("prompt")}
</View>"""


def answer_config() -> str:
    """A task per record: the prompt, its answer and the passages it cites
    with their sources; accept / reject / edit, edited texts, and the
    recipe's three scales (1-5)."""
    ratings = "\n".join(
        f'  <Header value="{label}" size="6"/>\n'
        f'  <Rating name="{name}" toName="answer" maxRating="5" icon="star" size="medium"/>'
        for name, label in SCALE_LABELS.items())
    return f"""<View>
  <Header value="Prompt ($subdomain, $task_type)"/>
  <Text name="prompt" value="$prompt"/>
  <Header value="Answer"/>
  <Text name="answer" value="$answer"/>
  <Header value="Passages it cites"/>
  <Text name="passages" value="$passages"/>
{_decision("answer")}
{ratings}
  <Header value="Edited prompt / answer (when the decision is edit)" size="6"/>
  <TextArea name="edited_prompt" toName="prompt" rows="2" maxSubmissions="1" editable="true"/>
  <TextArea name="edited_answer" toName="answer" rows="6" maxSubmissions="1" editable="true"/>
{_note("answer")}
</View>"""


def read_annotation(annotation: dict) -> dict | None:
    """An annotation's verdict as decision, edited texts, scales and note
    (None: cancelled or without a decision)."""
    if annotation.get("was_cancelled"):
        return None
    out: dict = {"decision": None, "edited_prompt": None, "edited_answer": None, "note": None,
                 "scales": {}}
    for r in annotation.get("result") or []:
        name, value = r.get("from_name"), r.get("value") or {}
        if name == "decision" and value.get("choices"):
            out["decision"] = str(value["choices"][0]).lower()
        elif name in ("edited_prompt", "edited_answer", "note") and value.get("text"):
            text = "\n".join(str(t) for t in value["text"]).strip()
            out[name] = text or None
        elif name in SCALE_LABELS and value.get("rating") is not None:
            out["scales"][name] = int(value["rating"])
    return out if out["decision"] else None


def choices_result(decision: str, to_name: str, texts: dict[str, str] | None = None,
                   scales: dict[str, int] | None = None) -> list[dict]:
    """An annotation's `result` as Label Studio's editor posts it."""
    result = [{"from_name": "decision", "to_name": to_name, "type": "choices",
               "value": {"choices": [decision]}}]
    for name, text in (texts or {}).items():
        result.append({"from_name": name, "to_name": "prompt" if name == "edited_prompt" else to_name,
                       "type": "textarea", "value": {"text": [text]}})
    for name, rating in (scales or {}).items():
        result.append({"from_name": name, "to_name": to_name, "type": "rating",
                       "value": {"rating": rating}})
    return result


def _is_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


class LabelStudioClient:
    def __init__(self, url: str, token: str, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self._token, self._access = token, None
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    @classmethod
    def from_env(cls, cfg: LabelStudioConfig) -> "LabelStudioClient":
        url, token = os.environ.get(cfg.url_env), os.environ.get(cfg.token_env)
        if not url or not token:
            missing = cfg.url_env if not url else cfg.token_env
            raise RecipeError(f"review.label_studio: environment variable {missing} is not set")
        return cls(url, token)

    def _auth(self, renew: bool = False) -> dict[str, str]:
        if not _is_jwt(self._token):
            return {"Authorization": f"Token {self._token}"}
        if self._access is None or renew:
            reply = self._send("POST", "/api/token/refresh/", json={"refresh": self._token},
                               auth=False)
            self._access = reply["access"]
        return {"Authorization": f"Bearer {self._access}"}

    def _send(self, method: str, path: str, auth: bool = True, **kwargs):
        for attempt in (0, 1):
            headers = self._auth(renew=attempt == 1) if auth else {}
            try:
                response = self._http.request(method, path, headers=headers, **kwargs)
            except httpx.HTTPError as err:
                raise LabelStudioError(f"Label Studio at {self.url}: {type(err).__name__}: {err}",
                                       unreachable=True) from None
            if response.status_code == 401 and auth and _is_jwt(self._token) and attempt == 0:
                continue  # the short-lived access token expired: renew once
            if response.status_code >= 400:
                raise LabelStudioError(f"Label Studio {method} {path}: HTTP {response.status_code}: "
                                       f"{response.text[:300]}", unreachable=response.status_code >= 500)
            return response.json() if response.content else None
        raise AssertionError("unreachable")

    def create_project(self, title: str, label_config: str, description: str = "",
                       reviewers_per_item: int = 1) -> int:
        reply = self._send("POST", "/api/projects", json={
            "title": title[:50], "description": description, "label_config": label_config,
            "maximum_annotations": reviewers_per_item, "overlap_cohort_percentage": 100,
            "show_skip_button": False})
        return int(reply["id"])

    def import_tasks(self, project_id: int, tasks: list[dict]) -> None:
        """Tasks as `{"data": {...}}`, in requests of 500."""
        for start in range(0, len(tasks), 500):
            self._send("POST", f"/api/projects/{project_id}/import",
                       json=tasks[start:start + 500])

    def tasks(self, project_id: int) -> list[dict]:
        """Every task of the project with its annotations."""
        return self._send("GET", f"/api/projects/{project_id}/export",
                          params={"exportType": "JSON", "download_all_tasks": "true"}) or []

    def annotate(self, task_id: int, result: list[dict], completed_by: int | None = None) -> dict:
        """Post an annotation (as the token's user, or as `completed_by`:
        for reviews made elsewhere and imported)."""
        body = {"result": result, "was_cancelled": False}
        if completed_by is not None:
            body["completed_by"] = completed_by
        return self._send("POST", f"/api/tasks/{task_id}/annotations", json=body)

    def project_link(self, project_id: int) -> str:
        return f"{self.url}/projects/{project_id}/data"

    def close(self) -> None:
        self._http.close()

