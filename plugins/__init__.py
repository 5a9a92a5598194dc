"""Built-in cogvx-ext plugins, installed as the cogvx_ext_plugins package."""
