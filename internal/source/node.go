package source

import (
	"context"
	"errors"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/nodecreds/nodecreds/internal/dockercfg"
	"github.com/nodecreds/nodecreds/internal/kube"
)

// AnnotationNodeSelector on a source Secret limits it to the Nodes whose
// labels match the label selector it holds (kubectl -l syntax). A Secret
// without it applies to every node.
const AnnotationNodeSelector = "nodecreds.io/node-selector"

// ErrNodeUnknown means a Secret limits itself to some nodes but the agent
// cannot tell whether its own Node is one of them.
var ErrNodeUnknown = errors.New("node labels unknown")

// NodeLabels is what a Secret's node selector is matched against: the
// agent's own Node. A nil *NodeLabels means the agent was given no node
// name.
type NodeLabels struct {
	Name   string
	Found  bool // false while the Node does not exist
	Labels labels.Set
}

// StillApplies reports whether a snapshot seen valid before (the agent's
// last good one) applies to the agent's Node as its labels are now: a
// Secret whose annotation turned invalid keeps its last good content in
// force only where its last good selector still matches.
func (s *Secrets) StillApplies(good Snapshot) bool {
	var node *NodeLabels
	if s.node != nil {
		node = s.node.Labels()
	}
	kept := ForNode([]Snapshot{good}, node)
	return len(kept) == 1 && kept[0].Err == nil
}

// ForNode keeps the snapshots that apply to node, in order: those without
// a node selector, and those whose selector matches its labels. A Secret
// whose selector cannot be evaluated (invalid, or the node's labels
// unknown) is kept with an error, so it is reported rather than silently
// ignored or applied where it may not belong.
func ForNode(snaps []Snapshot, node *NodeLabels) []Snapshot {
	out := make([]Snapshot, 0, len(snaps))
	for _, s := range snaps {
		switch {
		case !s.Selected:
			out = append(out, s) // applies everywhere, or already an error
		case node == nil:
			s.Err = fmt.Errorf("Secret %s has the %s annotation, but the agent has no --node-name to match it against: %w", s.Name, AnnotationNodeSelector, ErrNodeUnknown)
			out = append(out, s)
		case !node.Found:
			s.Err = fmt.Errorf("Secret %s has the %s annotation, but Node %s is not found: %w", s.Name, AnnotationNodeSelector, node.Name, ErrNodeUnknown)
			out = append(out, s)
		case s.NodeSelector == nil:
			out = append(out, s) // an annotation that does not parse: reported
		case s.NodeSelector.Matches(node.Labels):
			out = append(out, s)
		}
	}
	return out
}

// parseNodeSelector reads a Secret's node-selector annotation. An empty
// selector would match every node; it is refused as a likely mistake
// rather than read as "everywhere" (remove the annotation for that).
func parseNodeSelector(name string, annotations map[string]string) (labels.Selector, error) {
	text, ok := annotations[AnnotationNodeSelector]
	if !ok {
		return nil, nil
	}
	sel, err := labels.Parse(text)
	if err == nil && sel.Empty() {
		err = errors.New("empty")
	}
	if err != nil {
		// The parser's message quotes the annotation; it is not a secret,
		// but the contract is that errors carry names, never values.
		return nil, fmt.Errorf("Secret %s: annotation %s: %w", name, AnnotationNodeSelector, &dockercfg.ValidationError{Problems: []dockercfg.Problem{{
			Reason: "not a valid label selector (the syntax of kubectl -l, e.g. pool=a or pool in (b,c))"}}})
	}
	return sel, nil
}

// Node watches the agent's own Node (one watch, field-selected to its
// name) and calls onChange when its labels change.
type Node struct {
	name     string
	w        *watched
	onChange func()

	mu     sync.Mutex
	labels labels.Set
	found  bool
}

// NewNode returns a watch of the Node called name.
func NewNode(client kube.Interface, name string, onChange func()) *Node {
	n := &Node{name: name, onChange: onChange}
	fs := fields.OneTermEqualSelector("metadata.name", name).String()
	nodes := client.Nodes()
	lw := cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = fs
			return nodes.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = fs
			return nodes.Watch(ctx, o)
		},
	}, client)
	n.w = newWatched(lw, &corev1.Node{}, trimNode, n.check)
	return n
}

// trimNode keeps only the labels: a Node's status (images, conditions) is
// most of its size and changes all the time.
func trimNode(obj any) any {
	if node, ok := obj.(*corev1.Node); ok {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node.Name, ResourceVersion: node.ResourceVersion, Labels: node.Labels}}
	}
	return obj
}

// check records the Node's labels and signals only when what a selector
// sees changed (the agent's own status updates do not count).
func (n *Node) check() {
	var lbls labels.Set
	obj, found, _ := n.w.store.GetByKey(n.name)
	if node, ok := obj.(*corev1.Node); ok && found {
		lbls = node.Labels
	}
	n.mu.Lock()
	same := n.found == found && labels.Equals(n.labels, lbls)
	n.labels, n.found = lbls, found
	n.mu.Unlock()
	if !same {
		n.onChange()
	}
}

// Labels returns the Node's labels as last seen.
func (n *Node) Labels() *NodeLabels {
	n.mu.Lock()
	defer n.mu.Unlock()
	return &NodeLabels{Name: n.name, Found: n.found, Labels: n.labels}
}

// HasSynced reports whether the first list is in.
func (n *Node) HasSynced() bool { return n.w.HasSynced() }

// Run watches until ctx ends.
func (n *Node) Run(ctx context.Context) { n.w.Run(ctx) }
