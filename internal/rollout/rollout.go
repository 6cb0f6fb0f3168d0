// Package rollout answers `nodecreds status`: which revision of the source
// Secrets is current, and which nodes have applied it.
package rollout

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/klog/v2"

	"github.com/nodecreds/nodecreds/internal/kube"
	"github.com/nodecreds/nodecreds/internal/nodestatus"
	"github.com/nodecreds/nodecreds/internal/source"
)

// Options names the source Secrets, as the agents were given them, and
// the agents' pool.
type Options struct {
	Namespace string
	Secrets   []string
	Selector  string
	// Pool is the chart's pool whose nodes count ("" for the default
	// DaemonSet's): a pool's nodes apply that pool's Secrets only.
	Pool string
}

// NodeRow is one node's row.
type NodeRow struct {
	Name     string `json:"name"`
	Revision string `json:"revision"`
	// Expected is the revision this node should have: that of the source
	// Secrets that apply to it (their node selectors matched against its
	// labels).
	Expected string `json:"expected"`
	// Sources are the Secrets that apply to this node, in precedence order.
	Sources  []string `json:"sources"`
	InSync   bool     `json:"inSync"`
	SyncedAt string   `json:"syncedAt"`
	Message  string   `json:"message"`
	// Waiting names, for a node out of sync, each Secret it has not applied
	// as it is now (or still applies although it no longer should).
	Waiting []string `json:"waiting"`

	failing bool // the agent reports a failure (condition False)
}

// Rollout is the rollout of the current revision.
type Rollout struct {
	// Revision is the revision every node expects; empty when Secrets with
	// node selectors make it differ between nodes (see each NodeRow).
	Revision string    `json:"revision"`
	PerNode  bool      `json:"perNode"`
	InSync   bool      `json:"inSync"`
	Nodes    []NodeRow `json:"nodes"`
	Lagging  []string  `json:"lagging"`
	Sources  []string  `json:"sources"`
	// Ignored are nodes no nodecreds DaemonSet is meant to run on (its node
	// selector, required node affinity or tolerations exclude them, e.g.
	// Windows nodes): they do not hold a rollout back.
	Ignored []string `json:"ignored"`
	// Scope says how the nodes were chosen, for people.
	Scope string `json:"scope"`
	// Expiries are the Secrets' nodecreds.io/expires-at, earliest first.
	Expiries []Expiry `json:"expiries"`
}

// Expiry is when one Secret's credentials expire, as its
// nodecreds.io/expires-at annotation says.
type Expiry struct {
	Secret    string `json:"secret"`
	ExpiresAt string `json:"expiresAt,omitempty"` // RFC 3339, UTC
	// Left is the time left ("1h2m3s"), or "expired".
	Left        string `json:"left,omitempty"`
	LeftSeconds int64  `json:"leftSeconds"`
	Expired     bool   `json:"expired"`
	// Problem is why the annotation is ignored (it does not parse).
	Problem string `json:"problem,omitempty"`

	at time.Time
}

// expiries lists the Secrets' expiries at now, earliest first; one whose
// annotation does not parse, last, with why.
func expiries(snaps []source.Snapshot, now time.Time) []Expiry {
	out := []Expiry{}
	for _, s := range snaps {
		switch {
		case s.ExpiryErr != nil:
			out = append(out, Expiry{Secret: s.Name, Problem: s.ExpiryErr.Error()})
		case !s.ExpiresAt.IsZero():
			left := s.ExpiresAt.Sub(now).Truncate(time.Second)
			e := Expiry{Secret: s.Name, ExpiresAt: s.ExpiresAt.UTC().Format(time.RFC3339), LeftSeconds: int64(left.Seconds()), Expired: left <= 0, at: s.ExpiresAt}
			e.Left = left.String()
			if e.Expired {
				e.Left, e.LeftSeconds = "expired", 0
			}
			out = append(out, e)
		}
	}
	slices.SortStableFunc(out, func(a, b Expiry) int {
		if a.at.IsZero() != b.at.IsZero() {
			if a.at.IsZero() {
				return 1
			}
			return -1
		}
		return a.at.Compare(b.at)
	})
	return out
}

// DaemonSetLabel finds the nodecreds DaemonSets in the namespace.
const DaemonSetLabel = "app.kubernetes.io/name=nodecreds"

// PoolLabel names a pool's DaemonSet's pool (the chart's pools).
const PoolLabel = "nodecreds.io/pool"

// daemonSets selects the DaemonSets of pool ("" for those of no pool).
func daemonSets(pool string) string {
	if pool == "" {
		return DaemonSetLabel + ",!" + PoolLabel
	}
	return DaemonSetLabel + "," + PoolLabel + "=" + pool
}

// scope decides which nodes a rollout must reach: those where a nodecreds
// DaemonSet in the namespace would run a Pod. Without one (or without the
// right to read DaemonSets), every node counts.
type scope struct {
	sets []appsv1.DaemonSet
	desc string
}

func getScope(ctx context.Context, client kube.Interface, namespace, pool string) scope {
	sel := daemonSets(pool)
	list, err := client.DaemonSets(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	switch {
	case err != nil:
		return scope{desc: fmt.Sprintf("every node (DaemonSets in %s not readable: %v)", namespace, apiReason(err))}
	case len(list.Items) == 0:
		return scope{desc: fmt.Sprintf("every node (no DaemonSet labelled %s in %s)", sel, namespace)}
	}
	names := make([]string, len(list.Items))
	for i, ds := range list.Items {
		names[i] = ds.Name
	}
	return scope{sets: list.Items, desc: "nodes DaemonSet " + strings.Join(names, ", ") + " runs on"}
}

func apiReason(err error) string {
	if r := apierrors.ReasonForError(err); r != metav1.StatusReasonUnknown {
		return string(r)
	}
	return err.Error()
}

// covers reports whether a DaemonSet would run a Pod on node: its template's
// node selector and required node affinity match, and its tolerations
// tolerate every NoSchedule and NoExecute taint.
func (s scope) covers(node *corev1.Node) bool {
	if len(s.sets) == 0 {
		return true
	}
	for _, ds := range s.sets {
		spec := ds.Spec.Template.Spec
		if ok, err := nodeaffinity.NewRequiredNodeAffinity(spec.NodeSelector, spec.Affinity).Match(node); err != nil || !ok {
			continue
		}
		if tolerated(spec.Tolerations, node.Spec.Taints) {
			return true
		}
	}
	return false
}

func tolerated(tols []corev1.Toleration, taints []corev1.Taint) bool {
	for i := range taints {
		if taints[i].Effect == corev1.TaintEffectPreferNoSchedule {
			continue
		}
		ok := false
		for j := range tols {
			if tols[j].ToleratesTaint(klog.Background(), &taints[i], false) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// Get reads the Secrets and the Nodes once.
func Get(ctx context.Context, client kube.Interface, o Options) (Rollout, error) {
	snaps, err := snapshots(ctx, client, o)
	if err != nil {
		return Rollout{}, err
	}
	st := Rollout{Nodes: []NodeRow{}, Lagging: []string{}, Sources: []string{}, Ignored: []string{}}
	for _, s := range snaps {
		name := s.Name
		if s.NodeSelector != nil {
			name += " (nodes " + s.NodeSelector.String() + ")"
		}
		st.Sources = append(st.Sources, name)
	}
	st.Expiries = expiries(snaps, time.Now())
	nodes, err := client.Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return Rollout{}, fmt.Errorf("listing nodes: %w", err)
	}
	sc := getScope(ctx, client, o.Namespace, o.Pool)
	st.Scope = sc.desc
	expected := map[string]bool{}
	for i := range nodes.Items {
		n := &nodes.Items[i]
		if !sc.covers(n) {
			st.Ignored = append(st.Ignored, n.Name)
			continue
		}
		row := nodeRow(n, source.ForNode(snaps, &source.NodeLabels{Name: n.Name, Found: true, Labels: n.Labels}))
		expected[row.Expected] = true
		if !row.InSync {
			st.Lagging = append(st.Lagging, n.Name)
		}
		st.Nodes = append(st.Nodes, row)
	}
	switch {
	case len(expected) == 1:
		st.Revision = st.Nodes[0].Expected
	case slices.ContainsFunc(snaps, func(s source.Snapshot) bool { return s.NodeSelector != nil }):
		st.PerNode = true
	default:
		st.Revision = source.Revision(snaps)
	}
	sort.Slice(st.Nodes, func(i, j int) bool { return st.Nodes[i].Name < st.Nodes[j].Name })
	slices.Sort(st.Lagging)
	slices.Sort(st.Ignored)
	st.InSync = len(st.Lagging) == 0 && len(st.Nodes) > 0
	return st, nil
}

// nodeRow compares what a node reports with the sources that apply to it.
func nodeRow(n *corev1.Node, applies []source.Snapshot) NodeRow {
	row := NodeRow{Name: n.Name, Revision: n.Annotations[nodestatus.AnnotationRevision], SyncedAt: n.Annotations[nodestatus.AnnotationSyncedAt],
		Expected: source.Revision(applies), Sources: []string{}, Waiting: []string{}}
	for _, s := range applies {
		row.Sources = append(row.Sources, s.Name)
	}
	condOK := false
	for _, c := range n.Status.Conditions {
		if c.Type == nodestatus.ConditionType {
			condOK = c.Status == corev1.ConditionTrue
			row.Message = c.Message
			if !condOK {
				row.Message = c.Reason + ": " + c.Message
				row.failing = true
			}
		}
	}
	if row.Revision == "" && row.Message == "" {
		row.Message = "no nodecreds agent has reported on this node"
	}
	row.InSync = condOK && row.Revision == row.Expected
	if !row.InSync && row.Revision != "" {
		row.Waiting = waiting(source.ParseVersions(n.Annotations[nodestatus.AnnotationSources]), applies)
	}
	return row
}

// waiting names the Secrets whose applied version differs from what
// applies now.
func waiting(applied map[string]string, applies []source.Snapshot) []string {
	out := []string{}
	for _, s := range applies {
		switch rev, ok := applied[s.Name]; {
		case !ok:
			out = append(out, s.Name+" not applied")
		case rev != s.Revision:
			out = append(out, s.Name+" applied at an older version")
		}
		delete(applied, s.Name)
	}
	for _, name := range slices.Sorted(maps.Keys(applied)) {
		out = append(out, name+" still applied, no longer meant for this node")
	}
	return out
}

// snapshots builds the same snapshots the agents build (source.Select), so
// the revision digests compare.
func snapshots(ctx context.Context, client kube.Interface, o Options) ([]source.Snapshot, error) {
	return source.Select(o.Namespace, o.Secrets, o.Selector, apiLookup{ctx: ctx, client: client, o: o})
}

// apiLookup reads Secrets from the API server.
type apiLookup struct {
	ctx    context.Context
	client kube.Interface
	o      Options
}

func (a apiLookup) Get(name string) (*corev1.Secret, error) {
	sec, err := a.client.Secrets(a.o.Namespace).Get(a.ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("getting Secret %s/%s: %w", a.o.Namespace, name, err)
	}
	return sec, nil
}

func (a apiLookup) List() ([]*corev1.Secret, error) {
	list, err := a.client.Secrets(a.o.Namespace).List(a.ctx, metav1.ListOptions{LabelSelector: a.o.Selector})
	if err != nil {
		return nil, fmt.Errorf("listing Secrets %q in %s: %w", a.o.Selector, a.o.Namespace, err)
	}
	out := make([]*corev1.Secret, len(list.Items))
	for i := range list.Items {
		out[i] = &list.Items[i]
	}
	return out, nil
}

// Wait polls until every node has applied the current revision, or the
// timeout passes; it returns the last status either way.
func Wait(ctx context.Context, client kube.Interface, o Options, timeout, every time.Duration) (Rollout, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var (
		last    Rollout
		got     bool
		lastErr error
	)
	for {
		// A passing API error is retried until the deadline.
		st, err := Get(ctx, client, o)
		if err == nil {
			last, got, lastErr = st, true, nil
			if st.InSync {
				return st, nil
			}
		} else if ctx.Err() == nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if !got {
				if lastErr == nil {
					lastErr = ctx.Err()
				}
				return last, lastErr
			}
			return last, nil
		case <-time.After(every):
		}
	}
}

// WriteTable prints the status for people.
func (s Rollout) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	rev := s.Revision
	if s.PerNode {
		rev = "per node (Secrets with a node selector)"
	}
	fmt.Fprintf(tw, "sources:\t%s\nrevision:\t%s\nnodes:\t%s\n", strings.Join(s.Sources, ", "), dash(rev), s.Scope)
	for i, e := range s.Expiries {
		label := ""
		if i == 0 {
			label = "expires:"
		}
		switch {
		case e.Problem != "":
			fmt.Fprintf(tw, "%s\t%s: %s annotation ignored (%s)\n", label, e.Secret, source.AnnotationExpiresAt, e.Problem)
		case e.Expired:
			fmt.Fprintf(tw, "%s\t%s at %s (expired)\n", label, e.Secret, e.ExpiresAt)
		default:
			fmt.Fprintf(tw, "%s\t%s at %s (in %s)\n", label, e.Secret, e.ExpiresAt, e.Left)
		}
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "NODE\tREVISION\tIN SYNC\tSYNCED AT\tMESSAGE")
	for _, n := range s.Nodes {
		in := "yes"
		if !n.InSync {
			in = "no"
		}
		if s.PerNode && !n.InSync {
			in = "no (expects " + n.Expected + ")"
		}
		msg := n.Message
		if len(n.Waiting) > 0 {
			msg = "waiting: " + strings.Join(n.Waiting, ", ") + "; " + msg
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.Name, dash(n.Revision), in, dash(n.SyncedAt), msg)
	}
	fmt.Fprintf(tw, "\n%d of %d nodes in sync\n", len(s.Nodes)-len(s.Lagging), len(s.Nodes))
	if len(s.Ignored) > 0 {
		fmt.Fprintf(tw, "not counted (no nodecreds agent is meant to run there): %s\n", strings.Join(s.Ignored, ", "))
	}
	return tw.Flush()
}

// WriteJSON prints the status as one JSON object.
func (s Rollout) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// LaggingSummary names each lagging node with what it waits for, for the
// error `status --wait` ends with.
func (s Rollout) LaggingSummary() string {
	parts := make([]string, 0, len(s.Lagging))
	for _, n := range s.Nodes {
		if n.InSync {
			continue
		}
		why := slices.Clone(n.Waiting)
		if n.failing || (len(why) == 0 && n.Message != "") {
			why = append(why, n.Message)
		}
		if len(why) == 0 {
			parts = append(parts, n.Name)
			continue
		}
		parts = append(parts, n.Name+" ("+strings.Join(why, "; ")+")")
	}
	return strings.Join(parts, "; ")
}
