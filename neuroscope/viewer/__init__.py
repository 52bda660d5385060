"""The live viewer page (HTML, ES modules, CSS, icon), served by ``neuroscope.server.viewer``."""
