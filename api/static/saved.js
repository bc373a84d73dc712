/**
 * saved.js: the console's "Saved" tab. A picker of the saved playbooks (GET /api/playbooks)
 * and a form rendered from the picked one's declared params (GET /api/playbooks/{name}, whose
 * `params` the relay reads with events.params, the rule the worker side checks runs with): a
 * select for a choice, a password field for a secret, a checkbox for a bool, a number input
 * with its bounds for an int, a text input with its pattern for a string. Run submits
 * `{playbookName, params}`; a field left empty is left out, so its default applies.
 */

function field(param) {
  const id = `saved-param-${param.name}`;
  const wrap = document.createElement("div");
  wrap.className = "saved-param";
  wrap.dataset.testid = "saved-param";
  wrap.dataset.param = param.name;
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = param.name;
  if (param.required) {
    const mark = document.createElement("span");
    mark.className = "required";
    mark.dataset.testid = "required-mark";
    mark.textContent = " *";
    mark.title = "required";
    label.append(mark);
  }
  let input;
  if (param.type === "choice") {
    input = document.createElement("select");
    for (const choice of param.choices || []) {
      const option = document.createElement("option");
      option.value = option.textContent = choice;
      input.append(option);
    }
    if (param.default !== undefined) input.value = String(param.default);
  } else {
    input = document.createElement("input");
    if (param.type === "secret") {
      input.type = "password";
      input.autocomplete = "off";
    } else if (param.type === "bool") {
      input.type = "checkbox";
      input.checked = param.default === true;
    } else if (param.type === "int") {
      input.type = "number";
      input.step = "1";
      if (param.min !== undefined) input.min = String(param.min);
      if (param.max !== undefined) input.max = String(param.max);
    } else {
      input.type = "text";
      input.spellcheck = false;
      if (param.pattern !== undefined) input.pattern = param.pattern;
    }
    if (param.default !== undefined && param.type !== "bool") {
      input.placeholder = String(param.default);
    }
  }
  input.id = id;
  input.name = param.name;
  input.dataset.type = param.type;
  input.required = Boolean(param.required) && param.type !== "bool";
  if (param.description) input.title = param.description;
  wrap.append(label, input);
  return wrap;
}

/** The params the form gives: bools always, the other fields when filled. */
function values(box) {
  const params = {};
  for (const input of box.querySelectorAll("input, select")) {
    if (input.dataset.type === "bool") params[input.name] = input.checked;
    else if (input.value !== "") {
      params[input.name] = input.dataset.type === "int" ? Number(input.value) : input.value;
    }
  }
  return params;
}

export class SavedPlaybooks {
  /** `api(path)`: the console's authenticated GET; `submit(body, form)`: its Run. */
  constructor({ api, submit, showError }) {
    this.api = api;
    this.submit = submit;
    this.showError = showError;
    this.form = document.getElementById("saved-form");
    this.picker = document.getElementById("saved-playbook");
    this.box = document.getElementById("saved-params");
    this.version = document.getElementById("saved-version");
    this.picker.addEventListener("change", () => this.pick(this.picker.value));
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      if (!this.picker.value) return;
      const body = { playbookName: this.picker.value, params: values(this.box) };
      this.submit(body, this.form);
    });
  }

  /** Ask the relay for the saved playbooks again (each time the tab opens). */
  async refresh() {
    let rows;
    try {
      rows = await this.api("/api/playbooks");
    } catch (e) {
      if (e.status !== 401) this.showError(e.detail || e.message);
      return;
    }
    const current = this.picker.value;
    this.picker.replaceChildren();
    const none = document.createElement("option");
    none.value = "";
    none.textContent = rows.length ? "Pick a saved playbook" : "No saved playbook yet";
    this.picker.append(none);
    for (const row of rows) {
      const option = document.createElement("option");
      option.value = row.name;
      option.textContent = `${row.name} (v${row.version})`;
      this.picker.append(option);
    }
    if (rows.some((r) => r.name === current)) this.picker.value = current;
    await this.pick(this.picker.value);
  }

  async pick(name) {
    this.box.replaceChildren();
    delete this.box.dataset.ready;
    this.version.textContent = "";
    this.form.querySelector("button[type=submit]").disabled = !name;
    if (!name) return;
    let saved;
    try {
      saved = await this.api(`/api/playbooks/${encodeURIComponent(name)}`);
    } catch (e) {
      if (e.status !== 401) this.showError(e.detail || e.message);
      return;
    }
    if (this.picker.value !== name) return; // picked another meanwhile
    this.version.textContent = `version ${saved.version}`;
    for (const param of saved.params || []) this.box.append(field(param));
    this.box.dataset.ready = "true";
  }
}
