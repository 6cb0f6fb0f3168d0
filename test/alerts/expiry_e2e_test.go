package alerts

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/rules"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nodecreds/nodecreds/internal/testsupport"
	"github.com/nodecreds/nodecreds/test/cluster"
)

const (
	e2eNamespace = "nodecreds"
	e2eNode      = "n"
	// ecrEndpoint is the ECR generator's proxy_endpoint; the recipe keys
	// the Secret by its host.
	ecrEndpoint = "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com"
	ecrRegistry = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
	alertSoon   = "NodecredsCredentialsExpiring"
	alertPast   = "NodecredsCredentialsExpired"
	// lag bounds how long after a threshold the agent's Node condition may
	// say so: it wakes 50 ms after it and patches its Node, on a machine
	// shared with other tests.
	lag = 2 * time.Second
)

// TestExpiryAlertsEndToEnd: a real agent on a real API server follows the
// Secret docs/cloud-tokens.md's ECR recipe renders from the generator's
// output (rendered here from the page), rotated every 2 s with an expiry
// 10 s ahead, then no more. Its /metrics is scraped every second as a
// ServiceMonitor scrape would (the target labels added), and the chart's
// rules (expiringShare 0.5, expiringMinSeconds 1: the agent's
// --expiry-warn-share 0.5 --expiry-warn-min 1s) are evaluated at each
// scrape with Prometheus' own engine. While the rotations come neither
// alert is pending or firing and the condition stays Synced; once they
// stop, NodecredsCredentialsExpiring fires from the first evaluation
// after the warning threshold (the rule has no `for`) and
// NodecredsCredentialsExpired from the first one after the expiry, at the
// times the Node condition turns CredentialsExpiring and then
// CredentialsExpired; a refresh silences both. No token reaches the
// agent's log, its metrics, the condition or an alert.
func TestExpiryAlertsEndToEnd(t *testing.T) {
	ctx := t.Context()
	began := time.Now()
	bin := filepath.Join(t.TempDir(), "nodecreds")
	if err := testsupport.BuildNodecreds(repoRoot(), bin); err != nil {
		t.Fatal(err)
	}
	built := time.Now()
	c := startControlPlane(t)
	if err := cluster.Install(ctx, c.RESTConfig, filepath.Join(repoRoot(), "deploy", "daemonset.yaml")); err != nil {
		t.Fatal(err)
	}

	recipe := docRecipe(t, "ECRAuthorizationToken")
	var (
		mu     sync.Mutex
		tokens []string
	)
	// mint is one refresh: a new token from the generator (expires_at in
	// Unix seconds, as ECR gives it), rendered by the recipe, and the
	// expiry the Secret says.
	mint := func(ahead time.Duration) (*corev1.Secret, time.Time, error) {
		mu.Lock()
		defer mu.Unlock()
		token := fmt.Sprintf("ecr-canary-%d-%d", len(tokens), time.Now().UnixNano())
		tokens = append(tokens, token)
		expires := time.Now().Add(ahead).Unix()
		s, err := recipe.secret(map[string]string{
			"username": "AWS", "password": token, "proxy_endpoint": ecrEndpoint, "expires_at": strconv.FormatInt(expires, 10),
		})
		if err != nil {
			return nil, time.Time{}, err
		}
		at, err := time.Parse(time.RFC3339, s.Annotations["nodecreds.io/expires-at"])
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("the recipe renders nodecreds.io/expires-at %q: %w", s.Annotations["nodecreds.io/expires-at"], err)
		}
		if at.Unix() != expires {
			return nil, time.Time{}, fmt.Errorf("the recipe renders nodecreds.io/expires-at %q from expires_at %d", s.Annotations["nodecreds.io/expires-at"], expires)
		}
		return s, at, nil
	}
	first, _, err := mint(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if first.Type != corev1.SecretTypeDockerConfigJson || first.Namespace != e2eNamespace ||
		!strings.Contains(string(first.Data[corev1.DockerConfigJsonKey]), `"`+ecrRegistry+`"`) {
		t.Fatalf("the ECR recipe renders a %s Secret %s/%s keyed %q; want a %s in %s keyed %s",
			first.Type, first.Namespace, first.Name, keysOf(first.Data), corev1.SecretTypeDockerConfigJson, e2eNamespace, ecrRegistry)
	}
	secretLabel := first.Namespace + "/" + first.Name
	// docs/install.md#more-secrets: the Secret's name in --secret and in
	// the Role's resourceNames.
	allowSecret(t, c.Admin, first.Name)
	if _, err := c.Admin.CoreV1().Secrets(e2eNamespace).Create(ctx, first, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Admin.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: e2eNode, Labels: map[string]string{"kubernetes.io/os": "linux"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubeconfig, _, pod, err := c.AgentKubeconfig(ctx, e2eNamespace, "nodecreds", e2eNode)
	if err != nil {
		t.Fatal(err)
	}
	addr := testsupport.FreeAddr(t)
	agentLog := testsupport.Start(t, "agent", exec.Command(bin, "sync", "--kubeconfig", kubeconfig,
		"--namespace", e2eNamespace, "--secret", first.Name, "--node-name", e2eNode, "--host-root", t.TempDir(),
		"--metrics-addr", addr, "--expiry-warn-share", "0.5", "--expiry-warn-min", "1s", "--verify=off"))
	conds := watchCondition(t, c.Admin, e2eNode)
	testsupport.Eventually(t, 30*time.Second, "condition Synced", func() bool {
		r, s, _ := conds.now()
		return r == "Synced" && s == corev1.ConditionTrue
	})

	// The labels a scrape through the chart's ServiceMonitor gives: the
	// Service's job, the Pod's namespace and name, the endpoint, and node
	// from its relabelling (the rules aggregate by namespace).
	target := labels.FromStrings("job", "nodecreds-metrics", "namespace", e2eNamespace, "service", "nodecreds-metrics",
		"endpoint", "metrics", "container", "nodecreds", "pod", pod.Name, "node", e2eNode, "instance", addr)
	ruleDir := t.TempDir()
	mon := newMonitor(t, "http://"+addr+"/metrics", target, func(name string) bool { return strings.HasPrefix(name, "nodecreds_credentials_") },
		renderedRules(t, "prometheusRule.expiringShare=0.5,prometheusRule.expiringMinSeconds=1", ruleDir))
	for _, a := range []string{alertSoon, alertPast} {
		if hold := mon.rule(t, a).HoldDuration(); hold != 0 {
			t.Fatalf("%s has `for: %s`; this test expects it to fire at its first evaluation", a, hold)
		}
	}
	var obs []observation
	scrapeUntil := func(what string, within time.Duration, done func(observation) bool) {
		t.Helper()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		deadline := time.Now().Add(within)
		for {
			o, err := mon.scrape(ctx)
			if err != nil {
				t.Fatal(err)
			}
			obs = append(obs, o)
			if done(o) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %s", what, within)
			}
			<-tick.C
		}
	}
	series := map[string]string{"secret": secretLabel, "registry": ecrRegistry, "namespace": e2eNamespace, "pod": pod.Name}
	expiryOf := func(o observation) (float64, bool) {
		return o.value("nodecreds_credentials_expiry_timestamp_seconds", series)
	}

	// The generator refreshes every 2 s, each token 10 s ahead (9–10 s in
	// whole seconds): the warning threshold (half the lifetime) is never
	// reached.
	rotating, stopRotating := context.WithCancel(ctx)
	var lastExpiry time.Time
	rotated := make(chan struct{})
	go func() {
		defer close(rotated)
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-rotating.Done():
				return
			case <-tick.C:
				s, at, err := mint(10 * time.Second)
				if err == nil {
					err = update(rotating, c.Admin, s)
				}
				if err != nil {
					if rotating.Err() == nil {
						t.Errorf("rotating: %v", err)
					}
					return
				}
				mu.Lock()
				lastExpiry = at
				mu.Unlock()
			}
		}
	}()
	rotationsFrom := time.Now()
	scrapeUntil("rotations", 10*time.Second, func(observation) bool { return time.Since(rotationsFrom) >= 9*time.Second })
	stopRotating()
	<-rotated
	stoppedAt := time.Now()
	mu.Lock()
	expiresAt := lastExpiry
	rotations := len(tokens) - 1
	mu.Unlock()
	if rotations < 4 {
		t.Fatalf("%d rotations in 9 s, want 4", rotations)
	}

	// Then no more refreshes: scrape until the expiry has passed.
	scrapeUntil(alertPast+" firing", time.Until(expiresAt)+lag+3*time.Second, func(o observation) bool {
		return o.At.After(expiresAt.Add(lag)) && o.States[alertPast] == rules.StateFiring
	})
	// A refresh with a later expiry silences both.
	refresh, _, err := mint(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := update(ctx, c.Admin, refresh); err != nil {
		t.Fatal(err)
	}
	refreshedAt := time.Now()
	scrapeUntil("both alerts silent after a refresh", 5*time.Second, func(o observation) bool {
		return o.States[alertSoon] == rules.StateInactive && o.States[alertPast] == rules.StateInactive
	})
	testsupport.Eventually(t, 5*time.Second, "condition Synced after a refresh", func() bool {
		r, s, _ := conds.now()
		return r == "Synced" && s == corev1.ConditionTrue
	})
	conds.stop()

	// The warning threshold, from what the agent exported for the last
	// token: its lifetime counts from when it first saw that expiry.
	var lifetime float64
	moving := map[float64]bool{}
	for _, o := range obs {
		if v, ok := expiryOf(o); ok {
			moving[v] = true
			if v == float64(expiresAt.Unix()) {
				lifetime, _ = o.value("nodecreds_credentials_lifetime_seconds", series)
			}
		}
	}
	if len(moving) < rotations {
		t.Errorf("the scrapes saw %d expiry values over %d rotations", len(moving), rotations)
	}
	if lifetime < 7 || lifetime > 10 {
		t.Fatalf("the last token's lifetime as exported: %v s, want 7–10 (a 10 s token in whole seconds, less the agent's delay)", lifetime)
	}
	warnAt := expiresAt.Add(-max(time.Duration(lifetime*0.5*float64(time.Second)), time.Second))
	t.Logf("%d rotations until %s; last expiry %s, lifetime %.3fs, warning from %s",
		rotations, stoppedAt.Format("15:04:05.000"), expiresAt.Format("15:04:05"), lifetime, warnAt.Format("15:04:05.000"))

	// Each evaluation against the thresholds: a scrape within a few
	// milliseconds of one may fall on either side.
	near := func(at, threshold time.Time) bool { return at.Sub(threshold).Abs() < 20*time.Millisecond }
	var soonFirst, pastFirst time.Time
	var soonEvals, pastEvals int
	for _, o := range obs {
		soon, past := o.States[alertSoon], o.States[alertPast]
		line := fmt.Sprintf("scrape at %s: %s %s, %s %s", o.At.Format("15:04:05.000"), alertSoon, soon, alertPast, past)
		t.Log(line)
		if _, ok := expiryOf(o); !ok && o.At.Before(refreshedAt) {
			t.Errorf("%s: no expiry series %v scraped", line, series)
		}
		switch {
		case !o.At.Before(refreshedAt), near(o.At, warnAt), near(o.At, expiresAt):
		case o.At.Before(warnAt):
			if soon != rules.StateInactive || past != rules.StateInactive {
				t.Errorf("%s; want both inactive before the warning threshold (rotations until %s)", line, stoppedAt.Format("15:04:05.000"))
			}
		case o.At.Before(expiresAt):
			soonEvals++
			if soonFirst.IsZero() {
				soonFirst = o.At
			}
			if soon != rules.StateFiring || past != rules.StateInactive {
				t.Errorf("%s; want %s firing between the warning threshold and the expiry", line, alertSoon)
			}
			checkAlertLabels(t, o, alertSoon, "warning", secretLabel)
		default:
			pastEvals++
			if pastFirst.IsZero() {
				pastFirst = o.At
			}
			if soon != rules.StateInactive || past != rules.StateFiring {
				t.Errorf("%s; want %s firing alone after the expiry", line, alertPast)
			}
			checkAlertLabels(t, o, alertPast, "critical", secretLabel)
		}
	}
	if soonEvals == 0 || pastEvals == 0 {
		t.Fatalf("%d evaluations between the warning threshold and the expiry, %d after it; want some of each", soonEvals, pastEvals)
	}

	// The Node condition says the same, at the same times.
	for _, tr := range conds.log() {
		t.Logf("condition at %s: %s %s", tr.at.Format("15:04:05.000"), tr.status, tr.reason)
	}
	for _, w := range []struct {
		reason    string
		status    corev1.ConditionStatus
		from      time.Time
		firstEval time.Time
		alert     string
	}{
		{"CredentialsExpiring", corev1.ConditionTrue, warnAt, soonFirst, alertSoon},
		{"CredentialsExpired", corev1.ConditionFalse, expiresAt, pastFirst, alertPast},
	} {
		at, msg := conds.first(w.reason, w.status)
		switch {
		case at.IsZero():
			t.Errorf("the condition never said %s %s", w.status, w.reason)
		case at.Before(w.from) || at.After(w.from.Add(lag)):
			t.Errorf("condition %s at %s, want within %s of %s", w.reason, at.Format("15:04:05.000"), lag, w.from.Format("15:04:05.000"))
		default:
			t.Logf("%s: condition %s after the threshold, first firing evaluation %s after it",
				w.alert, at.Sub(w.from).Round(time.Millisecond), w.firstEval.Sub(w.from).Round(time.Millisecond))
		}
		if !strings.Contains(msg, secretLabel) || !strings.Contains(msg, ecrRegistry) {
			t.Errorf("condition %s message %q names neither the Secret nor the registry", w.reason, msg)
		}
	}
	for _, tr := range conds.log() {
		if tr.at.Before(warnAt) && tr.at.After(rotationsFrom) && (tr.reason != "Synced" || tr.status != corev1.ConditionTrue) {
			t.Errorf("condition %s %s at %s, before the warning threshold", tr.status, tr.reason, tr.at.Format("15:04:05.000"))
		}
	}

	// No token anywhere: the agent's log, what it exported, the
	// condition, the alerts.
	var out strings.Builder
	out.WriteString(agentLog.String())
	for _, o := range obs {
		out.WriteString(o.Body)
		for _, a := range o.Active {
			out.WriteString(strings.Join(a, "\n"))
		}
	}
	for _, tr := range conds.log() {
		out.WriteString(tr.message)
	}
	mu.Lock()
	for _, tok := range tokens {
		if strings.Contains(out.String(), tok) || strings.Contains(out.String(), testsupport.B64("AWS:"+tok)) {
			t.Errorf("a token (%d chars) is in the agent's log, metrics, condition or alerts", len(tok))
		}
	}
	mu.Unlock()
	if !strings.Contains(agentLog.String(), "expired") {
		t.Errorf("the agent's log does not say the credentials expired")
	}
	t.Logf("build %s; control plane to the end %s", built.Sub(began).Round(time.Millisecond), time.Since(built).Round(time.Millisecond))
}

// checkAlertLabels: the alert names the Secret and the registry, in the
// agents' namespace, with its severity.
func checkAlertLabels(t *testing.T, o observation, alert, severity, secret string) {
	t.Helper()
	want := labels.FromStrings(labels.AlertName, alert, "namespace", e2eNamespace, "registry", ecrRegistry, "secret", secret, "severity", severity).String()
	if a := o.Active[alert]; len(a) != 1 || !strings.HasPrefix(a[0], "firing "+want+" ") {
		t.Errorf("%s at %s: %q, want one firing %s", alert, o.At.Format("15:04:05.000"), a, want)
	}
}

// startControlPlane starts a real etcd + kube-apiserver; a missing build
// fails the test, naming `make controlplane`.
func startControlPlane(t *testing.T) *cluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "nodecreds-alerts-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	c, err := cluster.Start(ctx, dir)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatalf("starting the control plane: %v", err)
	}
	t.Cleanup(func() {
		c.Stop()
		if t.Failed() {
			t.Logf("control plane files kept in %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return c
}

// allowSecret adds name to the resourceNames of the agents' Role for
// Secrets.
func allowSecret(t *testing.T, client kubernetes.Interface, name string) {
	t.Helper()
	roles := client.RbacV1().Roles(e2eNamespace)
	role, err := roles.Get(t.Context(), "nodecreds-secrets", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(role.Rules) != 1 {
		t.Fatalf("Role nodecreds-secrets has %d rules, want 1", len(role.Rules))
	}
	role.Rules[0].ResourceNames = append(role.Rules[0].ResourceNames, name)
	if _, err := roles.Update(t.Context(), role, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// update replaces the Secret's data and annotations, as external-secrets
// does on each refresh.
func update(ctx context.Context, client kubernetes.Interface, s *corev1.Secret) error {
	cur, err := client.CoreV1().Secrets(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	cur.Data, cur.Annotations = s.Data, s.Annotations
	_, err = client.CoreV1().Secrets(s.Namespace).Update(ctx, cur, metav1.UpdateOptions{})
	return err
}

func keysOf(data map[string][]byte) []string {
	var keys []string
	for k := range data {
		keys = append(keys, k)
	}
	return keys
}

// conditionLog polls a Node's RegistryCredentialsSynced condition every
// 50 ms and keeps each change with when it was first seen.
type conditionLog struct {
	mu      sync.Mutex
	changes []conditionChange
	cancel  context.CancelFunc
	done    chan struct{}
}

type conditionChange struct {
	at              time.Time
	reason, message string
	status          corev1.ConditionStatus
}

func watchCondition(t *testing.T, client kubernetes.Interface, node string) *conditionLog {
	ctx, cancel := context.WithCancel(t.Context())
	l := &conditionLog{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for ctx.Err() == nil {
			if n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{}); err == nil {
				for _, c := range n.Status.Conditions {
					if c.Type == "RegistryCredentialsSynced" {
						l.record(conditionChange{at: time.Now(), reason: c.Reason, message: c.Message, status: c.Status})
					}
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(l.stop)
	return l
}

func (l *conditionLog) record(c conditionChange) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := len(l.changes); n > 0 {
		if last := l.changes[n-1]; last.reason == c.reason && last.status == c.status && last.message == c.message {
			return
		}
	}
	l.changes = append(l.changes, c)
}

func (l *conditionLog) stop() {
	l.cancel()
	<-l.done
}

func (l *conditionLog) log() []conditionChange {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]conditionChange(nil), l.changes...)
}

// now is the condition as last seen.
func (l *conditionLog) now() (string, corev1.ConditionStatus, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.changes) == 0 {
		return "", "", ""
	}
	c := l.changes[len(l.changes)-1]
	return c.reason, c.status, c.message
}

// first is when the condition first had reason and status, and its
// message then (zero when it never had).
func (l *conditionLog) first(reason string, status corev1.ConditionStatus) (time.Time, string) {
	for _, c := range l.log() {
		if c.reason == reason && c.status == status {
			return c.at, c.message
		}
	}
	return time.Time{}, ""
}
