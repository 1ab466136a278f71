"""The notebook side: IPython magics, the live dashboard, the kernel spec installer.

Nothing here is imported by `import fedless_nb`; `%load_ext fedless_nb` loads the magics. It may import
anything in the package; nothing outside notebook/ imports it.
"""
