package consumers

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kubernetes/pkg/kubelet/lifecycle"
	schedulerframework "k8s.io/kubernetes/pkg/scheduler/framework"
)

// noRecovery is a kubelet that evicts nothing to make room.
type noRecovery struct{}

func (noRecovery) HandleAdmissionFailure(_ context.Context, _ *corev1.Pod, reasons []lifecycle.PredicateFailureReason, _ lifecycle.Operation) ([]lifecycle.PredicateFailureReason, error) {
	return reasons, nil
}

// TestKubeletAdmitsAgainstNoExecuteTaintsOnly: a Pod bound to a node by
// spec.nodeName skips the scheduler, so only the kubelet's own admission
// stands between it and a tenant's node. The kubelet's code (v1.37,
// pkg/kubelet/lifecycle) admits it on a node tainted NoSchedule or
// PreferNoSchedule, and refuses it on a node tainted NoExecute unless it
// tolerates that taint: why the docs' tenant taints are NoExecute.
func TestKubeletAdmitsAgainstNoExecuteTaintsOnly(t *testing.T) {
	res := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourceMemory: resource.MustParse("8Gi"), corev1.ResourcePods: resource.MustParse("110")}
	for _, tc := range []struct {
		effect     corev1.TaintEffect
		toleration bool
		admitted   bool
	}{
		{corev1.TaintEffectNoSchedule, false, true},
		{corev1.TaintEffectPreferNoSchedule, false, true},
		{corev1.TaintEffectNoExecute, false, false},
		{corev1.TaintEffectNoExecute, true, true},
	} {
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "tenant-a-1", Labels: map[string]string{"kubernetes.io/os": "linux"}},
			Spec:       corev1.NodeSpec{Taints: []corev1.Taint{{Key: "tenant", Value: "a", Effect: tc.effect}}},
			Status:     corev1.NodeStatus{Capacity: res, Allocatable: res},
		}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "tenant-b", UID: "u1"},
			Spec:       corev1.PodSpec{NodeName: node.Name, Containers: []corev1.Container{{Name: "app", Image: "registry.tenant-a.example/private/app:1"}}},
		}
		if tc.toleration {
			pod.Spec.Tolerations = []corev1.Toleration{{Key: "tenant", Value: "a", Effect: tc.effect}}
		}
		admit := lifecycle.NewPredicateAdmitHandler(
			func(context.Context, bool) (*corev1.Node, error) { return node, nil },
			noRecovery{},
			func(*schedulerframework.NodeInfo, *lifecycle.PodAdmitAttributes) error { return nil },
		)
		got := admit.Admit(t.Context(), &lifecycle.PodAdmitAttributes{Pod: pod, Operation: lifecycle.AddOperation})
		if got.Admit != tc.admitted {
			t.Errorf("tenant taint %s, toleration %v: the kubelet admits %v (%s: %s), want %v", tc.effect, tc.toleration, got.Admit, got.Reason, got.Message, tc.admitted)
		}
	}
}
