"""The cluster model: sites, nodes, devices (whole or shared by fraction), free/used state."""

from suanli.cluster.state import ClusterState, NodeSpec, Site
from suanli.cluster.task import Task

__all__ = ["ClusterState", "NodeSpec", "Site", "Task"]
