"""The built-in samplers, one module per ``sampler.method``, named after it (``ohem-presample`` is
``ohem_presample.py``). Each registers its class with ``ohem.register_sampler``; the modules are found
by ``pkgutil`` (``ohem.mining.sampler.load_builtin_samplers``), so a new built-in sampler is one new
file here and no other package file changes."""
