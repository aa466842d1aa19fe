"""Test-only stand-in for Slicer's ScriptedLoadableModule base classes (Qt-free), so that the module file
imports on slicer-core. Every behaviour that matters lives in COVIDLesionSegLib; these classes only give the
module file the bases it names."""

import unittest


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent

    def setup(self):
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        pass


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=0):
        print(message)
