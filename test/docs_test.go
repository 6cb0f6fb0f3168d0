package test

import "testing"

// TestNodePoolDocExamplesParse: the examples of docs/node-pools.md that
// TestNodePoolIsolation, TestPoolsAddedByUpgradeAreCoveredAtOnce and
// TestNodePools run on an API server are complete and parse, checked
// without one so that an edit of the page fails fast.
func TestNodePoolDocExamplesParse(t *testing.T) {
	pools := readReadmePools(t)
	if pools.nodeOf(t, "tenant-a") == pools.nodeOf(t, "tenant-b") {
		t.Errorf("docs/node-pools.md puts both tenants on one node: %v", pools.pools)
	}
	if pools.first.set == "" || pools.first.upgradeSet == "" || pools.first.probeDryRun != "server" {
		t.Errorf("docs/node-pools.md's first install is incomplete: %+v", pools.first)
	}
	placing := readReadmeNodePools(t)
	if placing.secret.Annotations["nodecreds.io/node-selector"] == "" {
		t.Errorf("docs/node-pools.md's placement example has no node-selector annotation: %+v", placing.secret.Annotations)
	}
}
