"""Package layout: the `recbrew` library plus root folders mapped into it.

`kernels/` and `eval/` import as `recbrew.kernels` and `recbrew.eval`; the shipped catalog folders
`prompts/`, `tasks/` and `configs/` travel inside the wheel as `recbrew.assets.*`. Everything else
is declared in pyproject.toml.
"""

from setuptools import find_namespace_packages, find_packages, setup

ROOT_FOLDERS = {
    "recbrew.kernels": "kernels",
    "recbrew.eval": "eval",
    "recbrew.assets.prompts": "prompts",
    "recbrew.assets.tasks": "tasks",
    "recbrew.assets.configs": "configs",
}

packages = find_packages(include=["recbrew", "recbrew.*"])
package_dir = {"recbrew": "recbrew"}
for name, folder in ROOT_FOLDERS.items():
    package_dir[name] = folder
    packages.append(name)
    for sub in find_namespace_packages(where=folder, exclude=["__pycache__*"]):
        packages.append(f"{name}.{sub}")
        package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"": ["*.j2", "*.yaml", "*.yml", "*.json", "*.md"]},
)
