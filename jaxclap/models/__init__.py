"""models package of jaxclap."""
