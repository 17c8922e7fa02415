"""The prompt templates (`<step>.jinja2` + `<step>.schema.json`), shipped as
package data so a wheel install finds them too; see `sftmill.prompts`."""
