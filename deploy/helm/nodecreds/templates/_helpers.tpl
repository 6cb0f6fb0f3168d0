{{/* The image reference: repository@digest, else repository:tag. */}}
{{- define "nodecreds.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{- define "nodecreds.labels" -}}
app.kubernetes.io/name: nodecreds
{{- end -}}

{{/* A volume name for a target's folder. */}}
{{- define "nodecreds.dirName" -}}
{{- if eq . "/var/lib/kubelet" -}}kubelet-dir
{{- else if eq . "/root/.docker" -}}docker-dir
{{- else -}}dir{{ . | replace "/" "-" | replace "." "-" | replace "_" "-" | lower | trunc 50 | trimSuffix "-" }}
{{- end -}}
{{- end -}}

{{/* "true" when the default DaemonSet runs (on every node in no pool):
it has Secrets to read, named or by a label selector. With neither
(secrets: [] or null), nodes in no pool run no agent. */}}
{{- define "nodecreds.hasDefault" -}}
{{- if or .Values.selector .Values.secrets }}true{{ end -}}
{{- end -}}

{{/* The ServiceAccounts of every agent, default first, as "name". The
admission policy does not use this list: it covers every name the chart
can give an agent (nodecreds, nodecreds-<pool>), whatever the values. */}}
{{- define "nodecreds.serviceAccounts" -}}
{{- $out := list -}}
{{- if include "nodecreds.hasDefault" . }}{{ $out = append $out "nodecreds" }}{{ end -}}
{{- range .Values.pools }}{{ $out = append $out (printf "nodecreds-%s" .name) }}{{ end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Refuses a list of Secret names that RBAC would read wider than the
names: resourceNames [] allows every name, and [""] (what helm --set
'secrets={}' gives) a list call without one; a duplicate or a non-string
is a mistake. Arguments: list WHERE VALUE. */}}
{{- define "nodecreds.checkSecretNames" -}}
{{- $where := index . 0 }}{{ $v := index . 1 -}}
{{- if not (kindIs "slice" $v) -}}
{{- fail (printf "%s: must be a list of Secret names, e.g. {registry-credentials}; got %v" $where $v) -}}
{{- end -}}
{{- if not $v -}}
{{- fail (printf "%s is empty: a Role must name the Secrets it allows (an empty resourceNames allows them all); name the Secrets" $where) -}}
{{- end -}}
{{- $seen := dict -}}
{{- range $i, $n := $v -}}
{{- if not (kindIs "string" $n) -}}
{{- fail (printf "%s[%d]: %v is not a string; quote it (helm --set-string, or \"...\" in a values file)" $where $i $n) -}}
{{- end -}}
{{- if eq $n "" -}}
{{- fail (printf "%s[%d] is empty: in a Role an empty name matches a list of every Secret (helm --set '%s={}' gives one); name the Secrets (no default agent at all: --set secrets=null, or secrets: [] in a values file)" $where $i $where) -}}
{{- end -}}
{{- if or (gt (len $n) 253) (not (regexMatch `^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$` $n)) -}}
{{- fail (printf "%s[%d]: %q is not a Secret name" $where $i $n) -}}
{{- end -}}
{{- if hasKey $seen $n -}}
{{- fail (printf "%s: %q is listed twice" $where $n) -}}
{{- end -}}
{{- $_ := set $seen $n true -}}
{{- end -}}
{{- end -}}

{{/* The Secrets the chart's values put into every agent's Pod spec
(imagePullSecrets, extraEnv's secretKeyRef), as JSON: a list of [where,
name]. The kubelet of every node that runs one of these Pods may read them
(the Node authorizer). */}}
{{- define "nodecreds.podSecretRefs" -}}
{{- $out := list -}}
{{- range $i, $s := .Values.imagePullSecrets | default list -}}
{{- if not (and (kindIs "map" $s) (kindIs "string" $s.name) $s.name) -}}
{{- fail (printf "imagePullSecrets[%d]: must be {name: SECRET}; got %v" $i $s) -}}
{{- end -}}
{{- $out = append $out (list (printf "imagePullSecrets[%d]" $i) $s.name) -}}
{{- end -}}
{{- range $i, $e := .Values.extraEnv | default list -}}
{{- if not (kindIs "map" $e) -}}
{{- fail (printf "extraEnv[%d]: must be an environment variable ({name, value} or {name, valueFrom}); got %v" $i $e) -}}
{{- end -}}
{{- with $e.valueFrom -}}
{{- if hasKey . "secretKeyRef" -}}
{{- $ref := .secretKeyRef -}}
{{- if not (and (kindIs "map" $ref) (kindIs "string" $ref.name) $ref.name) -}}
{{- fail (printf "extraEnv[%d].valueFrom.secretKeyRef: must name a Secret" $i) -}}
{{- end -}}
{{- $out = append $out (list (printf "extraEnv[%d].valueFrom.secretKeyRef" $i) $ref.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Tolerations (JSON) with the nodecreds.io/not-ready startup taint the
agent removes always tolerated (any effect): without it a node registered
with that taint would wait for an agent for ever. */}}
{{- define "nodecreds.tolerations" -}}
{{- $list := . | default list -}}
{{- $covered := false -}}
{{- range $list -}}
{{- if and (kindIs "map" .) (eq (toString (.operator | default "")) "Exists") (not .effect) (or (not .key) (eq (toString .key) "nodecreds.io/not-ready")) }}{{ $covered = true }}{{ end -}}
{{- end -}}
{{- if not $covered -}}
{{- $list = append $list (dict "key" "nodecreds.io/not-ready" "operator" "Exists") -}}
{{- end -}}
{{- toJson $list -}}
{{- end -}}

{{/* An agent Pod's labels: the default DaemonSet's keep the selector they
always had; a pool's differ from them, so no DaemonSet's selector matches
another's Pods. The argument is the pool's name ("" for the default). */}}
{{- define "nodecreds.podLabels" -}}
{{- if . -}}
app.kubernetes.io/name: nodecreds-pool
nodecreds.io/pool: {{ . }}
{{- else -}}
app.kubernetes.io/name: nodecreds
{{- end }}
app.kubernetes.io/part-of: nodecreds
{{- end -}}

{{/* Node selector terms (JSON: a list of matchExpressions lists) matching
every node that none of the given pools selects. A pool selects the nodes
that have all its labels, so a node is outside it when one of them differs
(NotIn also matches a node without the label); outside all of them is the
product of those choices. */}}
{{- define "nodecreds.notInTerms" -}}
{{- $terms := list (list) -}}
{{- range $p := . -}}
{{- $next := list -}}
{{- range $t := $terms -}}
{{- range $k := keys $p.nodeSelector | sortAlpha -}}
{{- $next = append $next (append $t (dict "key" $k "operator" "NotIn" "values" (list (toString (get $p.nodeSelector $k))))) -}}
{{- end -}}
{{- end -}}
{{- $terms = $next -}}
{{- end -}}
{{- if gt (len $terms) 64 -}}
{{- fail (printf "pools: keeping each node to one pool takes %d node selector terms (one per combination of the earlier pools' nodeSelector labels); give each pool fewer labels, such as the one key node-restriction.kubernetes.io/pool" (len $terms)) -}}
{{- end -}}
{{- toJson $terms -}}
{{- end -}}

{{/* affinity (JSON) with, in its required node affinity, the nodes of the
given pools excluded: every term of the user's own required affinity is
combined with every term of the exclusion. */}}
{{- define "nodecreds.affinity" -}}
{{- $aff := deepCopy (.affinity | default dict) -}}
{{- if .exclude -}}
{{- $terms := include "nodecreds.notInTerms" .exclude | fromJsonArray -}}
{{- $na := get $aff "nodeAffinity" | default dict -}}
{{- $req := get $na "requiredDuringSchedulingIgnoredDuringExecution" | default dict -}}
{{- $user := get $req "nodeSelectorTerms" | default (list (dict)) -}}
{{- $out := list -}}
{{- range $u := $user -}}
{{- range $t := $terms -}}
{{- $term := deepCopy $u -}}
{{- $_ := set $term "matchExpressions" (concat (get $u "matchExpressions" | default list) $t) -}}
{{- $out = append $out $term -}}
{{- end -}}
{{- end -}}
{{- $_ := set $req "nodeSelectorTerms" $out -}}
{{- $_ := set $na "requiredDuringSchedulingIgnoredDuringExecution" $req -}}
{{- $_ := set $aff "nodeAffinity" $na -}}
{{- end -}}
{{- toJson $aff -}}
{{- end -}}

{{/* Refuses a node folder the chart would mount read-write from the host
that is the root or a system folder: a typo such as targets={/config.json}
would otherwise hand the agent the whole node. */}}
{{- define "nodecreds.checkFolder" -}}
{{- $what := index . 0 -}}
{{- $path := toString (index . 1) -}}
{{- $isFile := index . 2 -}}
{{- if not (isAbs $path) -}}
{{- fail (printf "%s: %q must be an absolute node path" $what $path) -}}
{{- end -}}
{{- if not (regexMatch `^[A-Za-z0-9._+@/-]+$` $path) -}}
{{- fail (printf "%s: %q: a node path here may hold letters, digits and . _ + @ / - only" $what $path) -}}
{{- end -}}
{{- $dir := clean $path -}}
{{- if $isFile }}{{ $dir = dir $dir }}{{ end -}}
{{- $system := list "/" "/bin" "/boot" "/dev" "/etc" "/home" "/lib" "/lib32" "/lib64" "/libx32" "/media" "/mnt" "/opt" "/proc" "/root" "/run" "/sbin" "/srv" "/sys" "/tmp" "/usr" "/usr/local" "/var" "/var/lib" "/var/log" "/var/run" "/var/tmp" "/var/lib/nodecreds" -}}
{{- $subtrees := list "/bin" "/boot" "/dev" "/lib" "/lib32" "/lib64" "/libx32" "/proc" "/sbin" "/sys" "/usr/bin" "/usr/lib" "/usr/libexec" "/usr/sbin" -}}
{{- $bad := has $dir $system -}}
{{- range $subtrees }}{{ if or (eq . $dir) (hasPrefix (printf "%s/" .) $dir) }}{{ $bad = true }}{{ end }}{{ end -}}
{{- if $bad -}}
{{- fail (printf "%s: %q: the chart would mount the node folder %s read-write into the agent, and that is the root, a system folder or nodecreds' state folder; use a folder of its own (the defaults are /var/lib/kubelet/config.json, /root/.docker/config.json and /opt/nodecreds/bin)" $what $path $dir) -}}
{{- end -}}
{{- end -}}

{{/* Refuses a value that is not a whole number from min to max (max 0:
no upper bound): the flowControl values are written into the objects as
numbers. Arguments: list WHERE VALUE MIN MAX. */}}
{{- define "nodecreds.checkInt" -}}
{{- $where := index . 0 }}{{ $v := index . 1 }}{{ $min := index . 2 }}{{ $max := index . 3 -}}
{{- if not (and (or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "float64" $v)) (eq (float64 $v) (float64 (int64 $v))) (ge (int64 $v) (int64 $min)) (or (eq (int64 $max) 0) (le (int64 $v) (int64 $max)))) -}}
{{- if eq (int64 $max) 0 -}}
{{- fail (printf "%s: %v is not a whole number of at least %d" $where $v $min) -}}
{{- else -}}
{{- fail (printf "%s: %v is not a whole number from %d to %d" $where $v $min $max) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The flowControl values: numbers the API server takes, and a
matchingPrecedence that puts the agents' schema after the system ones and
before the default service-accounts one. */}}
{{- define "nodecreds.checkFlowControl" -}}
{{- $fc := .Values.flowControl -}}
{{- if eq .Release.Namespace "kube-system" -}}
{{- fail "flowControl.enabled in namespace kube-system: the FlowSchema kube-system-service-accounts (matchingPrecedence 900, priority level workload-high) matches every ServiceAccount of kube-system before the agents' schema could; install nodecreds in a namespace of its own (docs/install.md), or leave flowControl off" -}}
{{- end -}}
{{- include "nodecreds.checkInt" (list "flowControl.nominalConcurrencyShares" $fc.nominalConcurrencyShares 1 0) -}}
{{- if gt (int64 $fc.nominalConcurrencyShares) 40 -}}
{{- fail (printf "flowControl.nominalConcurrencyShares: %v is more than 40 (global-default's and workload-high's share): the level belongs to the agents' ServiceAccount token, which whoever is root on any node can take, and a larger share would take seats from the kubelets' node-high and the system levels" $fc.nominalConcurrencyShares) -}}
{{- end -}}
{{- include "nodecreds.checkInt" (list "flowControl.lendablePercent" $fc.lendablePercent 0 100) -}}
{{- include "nodecreds.checkInt" (list "flowControl.queuing.queues" $fc.queuing.queues 1 0) -}}
{{- include "nodecreds.checkInt" (list "flowControl.queuing.handSize" $fc.queuing.handSize 1 (int64 $fc.queuing.queues)) -}}
{{- include "nodecreds.checkInt" (list "flowControl.queuing.queueLengthLimit" $fc.queuing.queueLengthLimit 1 0) -}}
{{- $p := $fc.matchingPrecedence -}}
{{- if not (and (or (kindIs "int" $p) (kindIs "int64" $p) (kindIs "float64" $p)) (eq (float64 $p) (float64 (int64 $p))) (gt (int64 $p) 900) (lt (int64 $p) 9000)) -}}
{{- fail (printf "flowControl.matchingPrecedence: %v must be a whole number above 900 and below 9000: the agents' schema comes after Kubernetes' system schemas (the last, kube-system-service-accounts, is 900) and before service-accounts (9000), which would otherwise match the agents first" $p) -}}
{{- end -}}
{{- end -}}

{{/* Every check of the values that the templates cannot express: each
fails the install naming the fix. */}}
{{- define "nodecreds.validate" -}}
{{- range .Values.targets -}}
{{- include "nodecreds.checkFolder" (list "targets" . true) -}}
{{- end -}}
{{- if .Values.credentialProvider.enabled -}}
{{- include "nodecreds.checkFolder" (list "credentialProvider.binDir" .Values.credentialProvider.binDir false) -}}
{{- end -}}
{{- with .Values.runtimeAuth.containerdCertsDir -}}
{{- include "nodecreds.checkFolder" (list "runtimeAuth.containerdCertsDir" . false) -}}
{{- $config := toString $.Values.runtimeAuth.containerdConfig -}}
{{- if or (not (isAbs $config)) (not (regexMatch `^[A-Za-z0-9._+@/-]+$` $config)) -}}
{{- fail (printf "runtimeAuth.containerdConfig: %q must be an absolute node path of letters, digits and . _ + @ / - only" $config) -}}
{{- end -}}
{{- if ne (base (dir (clean $config))) "containerd" -}}
{{- fail (printf "runtimeAuth.containerdConfig: %q: the chart mounts its folder %s read-only into the agent, so it must be containerd's own folder, named containerd (/etc/containerd/config.toml; k3s: /var/lib/rancher/k3s/agent/etc/containerd/config.toml), never a folder holding other secrets such as /etc/kubernetes" $config (dir (clean $config))) -}}
{{- end -}}
{{- end -}}
{{- /* Values written into the Pod spec as they are: nothing but what
they name (no line break could add a field). */ -}}
{{- with .Values.image -}}
{{- if not (regexMatch `^[a-z0-9]([-a-z0-9._:/]*[a-z0-9])?$` (toString .repository)) -}}
{{- fail (printf "image.repository: %q is not an image repository" (toString .repository)) -}}
{{- end -}}
{{- if and .tag (not (regexMatch `^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$` (toString .tag))) -}}
{{- fail (printf "image.tag: %q is not an image tag" (toString .tag)) -}}
{{- end -}}
{{- if and .digest (not (regexMatch `^sha256:[a-f0-9]{64}$` (toString .digest))) -}}
{{- fail (printf "image.digest: %q is not a sha256 digest (sha256:<64 hex>)" (toString .digest)) -}}
{{- end -}}
{{- if not (has (toString .pullPolicy) (list "Always" "IfNotPresent" "Never")) -}}
{{- fail (printf "image.pullPolicy: %q is not Always, IfNotPresent or Never" (toString .pullPolicy)) -}}
{{- end -}}
{{- end -}}
{{- $port := .Values.metrics.port -}}
{{- if not (and (or (kindIs "int" $port) (kindIs "int64" $port) (kindIs "float64" $port)) (eq (float64 $port) (float64 (int $port))) (ge (int $port) 1) (le (int $port) 65535)) -}}
{{- fail (printf "metrics.port: %v is not a port number (1-65535)" $port) -}}
{{- end -}}
{{- if .Values.flowControl.enabled -}}
{{- include "nodecreds.checkFlowControl" . -}}
{{- end -}}
{{- with .Values.updateStrategy.rollingUpdate -}}
{{- if and .maxSurge (not (has (toString .maxSurge) (list "0" "0%"))) -}}
{{- fail (printf "updateStrategy.rollingUpdate.maxSurge=%v: a node runs one agent at a time (a new agent waits for the old one to stop, and is not ready meanwhile), so a surge rollout, which stops the old Pod only once the new one is ready, would never finish; use maxUnavailable" .maxSurge) -}}
{{- end -}}
{{- end -}}
{{- $pools := .Values.pools | default list -}}
{{- if not (kindIs "slice" $pools) -}}
{{- fail (printf "pools: must be a list of pools; got %v" $pools) -}}
{{- end -}}
{{- if and .Values.selector $pools -}}
{{- fail (printf "selector=%q with pools: a label selector lets the default DaemonSet's agents list every Secret in namespace %s, the pools' Secrets included (RBAC cannot narrow a label-selected list); name the default Secrets in secrets instead" .Values.selector $.Release.Namespace) -}}
{{- end -}}
{{- $names := dict -}}
{{- range $i, $p := $pools -}}
{{- if not (kindIs "map" $p) -}}
{{- fail (printf "pools[%d]: must be a map with name, nodeSelector, secrets (and optionally tolerations)" $i) -}}
{{- end -}}
{{- range $k, $_ := $p -}}
{{- if not (has $k (list "name" "nodeSelector" "tolerations" "secrets" "selector")) -}}
{{- fail (printf "pools[%d]: unknown key %q (a pool has name, nodeSelector, tolerations, secrets)" $i $k) -}}
{{- end -}}
{{- end -}}
{{- $name := toString ($p.name | default "") -}}
{{- if not (regexMatch `^[a-z0-9]([-a-z0-9]{0,48}[a-z0-9])?$` $name) -}}
{{- fail (printf "pools[%d].name %q: must be a DNS label of at most 50 characters (it names the pool's ServiceAccount, Role and DaemonSet)" $i $name) -}}
{{- end -}}
{{- if hasKey $names $name -}}
{{- fail (printf "pools[%d].name %q: two pools have that name" $i $name) -}}
{{- end -}}
{{- $_ := set $names $name true -}}
{{- $where := printf "pools[%d] (%s)" $i $name -}}
{{- if not (and (kindIs "map" $p.nodeSelector) $p.nodeSelector) -}}
{{- fail (printf "%s: nodeSelector is missing; a pool is the nodes that carry its labels, e.g. nodeSelector: {node-restriction.kubernetes.io/pool: %s}" $where $name) -}}
{{- end -}}
{{- range $k, $v := $p.nodeSelector -}}
{{- if not (regexMatch `^([a-z0-9.-]+\.)?node-restriction\.kubernetes\.io/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$` $k) -}}
{{- fail (printf "%s: nodeSelector key %q is a label a node can set on itself (NodeRestriction lets a kubelet set most labels on its own Node), so a node could move itself into this pool and be given its Secrets; use a label under node-restriction.kubernetes.io/, which no kubelet may set, e.g. node-restriction.kubernetes.io/pool=%s (kubectl label node NODE node-restriction.kubernetes.io/pool=%s)" $where $k $name $name) -}}
{{- end -}}
{{- if eq (toString $v) "" -}}
{{- fail (printf "%s: nodeSelector %s has an empty value" $where $k) -}}
{{- end -}}
{{- end -}}
{{- if $p.selector -}}
{{- fail (printf "%s: selector: a label selector lets the pool's agents list every Secret in namespace %s, the other pools' and the default ones included (RBAC cannot narrow a label-selected list), which is what pools exist to prevent; name the pool's Secrets in pools[%d].secrets" $where $.Release.Namespace $i) -}}
{{- end -}}
{{- if not $p.secrets -}}
{{- fail (printf "%s: secrets is empty; name the pool's source Secrets (in namespace %s), in precedence order" $where $.Release.Namespace) -}}
{{- end -}}
{{- include "nodecreds.checkSecretNames" (list (printf "pools[%d].secrets" $i) $p.secrets) -}}
{{- end -}}
{{- /* The default agent's Secrets: every node in no pool gets them,
including any node that joins the cluster. With pools, none may be one
that some pools list and others do not (a tenant's), and with no Secret
and no selector no default agent runs (nodes in no pool get none). */ -}}
{{- if and (not .Values.selector) (ne (kindOf .Values.secrets) "invalid") -}}
{{- if or (not (kindIs "slice" .Values.secrets)) .Values.secrets -}}
{{- include "nodecreds.checkSecretNames" (list "secrets" .Values.secrets) -}}
{{- end -}}
{{- end -}}
{{- $readers := dict -}}
{{- range $p := $pools -}}
{{- range $p.secrets }}{{ $_ := set $readers . (append (get $readers . | default list) $p.name) }}{{ end -}}
{{- end -}}
{{- if not .Values.selector -}}
{{- range .Values.secrets | default list -}}
{{- $by := get $readers . | default list -}}
{{- if and $by (lt (len $by) (len $pools)) -}}
{{- fail (printf "secrets: %q is a Secret of pool %s, not of every pool: listed here it would reach every node in no pool, including any node that joins the cluster; keep it in its pools only (a Secret every node may have is listed here and by every pool)" . (join ", " $by)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* Secrets referenced by the agents' Pod specs reach the kubelet of
every node that runs an agent: each must be one that every agent reads, or
none. */ -}}
{{- $agents := len $pools -}}
{{- $default := list -}}
{{- if include "nodecreds.hasDefault" . -}}
{{- $agents = add1 $agents -}}
{{- if not .Values.selector }}{{ $default = .Values.secrets }}{{ end -}}
{{- end -}}
{{- range include "nodecreds.podSecretRefs" . | fromJsonArray -}}
{{- $where := index . 0 }}{{ $name := index . 1 -}}
{{- $by := get $readers $name | default list -}}
{{- if has $name $default }}{{ $by = prepend $by "the default agents" }}{{ end -}}
{{- if and $by (lt (len $by) $agents) -}}
{{- fail (printf "%s: %q is a source Secret of %s only; in the agents' Pod spec it would reach the kubelet of every node that runs an agent (the Node authorizer lets a kubelet read the Secrets its Pods reference), the other pools' included; reference a Secret that no agent syncs (for the nodecreds image: its own pull Secret)" $where $name (join ", " $by)) -}}
{{- end -}}
{{- end -}}
{{- range $j, $q := $pools -}}
{{- range $i, $p := $pools -}}
{{- if lt $i $j -}}
{{- $inside := true -}}
{{- range $k, $v := $p.nodeSelector -}}
{{- if not (and (hasKey $q.nodeSelector $k) (eq (toString (get $q.nodeSelector $k)) (toString $v))) }}{{ $inside = false }}{{ end -}}
{{- end -}}
{{- if $inside -}}
{{- fail (printf "pools[%d] (%s) selects only nodes that pools[%d] (%s) selects, so it would run on none (each node runs the agent of the first pool that selects it); give it labels of its own" $j $q.name $i $p.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A CEL expression: every field path of the managedFields set (fieldsV1)
named by the first argument is in the one named by the second, checked to
the depth given last (deeper, the two must be equal: refused when unsure).
Arguments: list X Y level depth. */}}
{{- define "nodecreds.celSubset" -}}
{{- $x := index . 0 }}{{ $y := index . 1 }}{{ $level := index . 2 }}{{ $depth := index . 3 -}}
{{- if ge $level $depth -}}
{{ $x }} == {{ $y }}
{{- else -}}
{{- $k := printf "k%d" $level -}}
{{ $x }}.all({{ $k }}, {{ $k }} in {{ $y }} && ({{ $x }}[{{ $k }}].size() == 0 || {{ include "nodecreds.celSubset" (list (printf "%s[%s]" $x $k) (printf "%s[%s]" $y $k) (add1 $level) $depth) }}))
{{- end -}}
{{- end -}}

{{/* A CEL expression: the managedFields entry n is the old entry o, or o
less what the agent's own writes take from other managers: the taints
(when they changed), nodecreds' annotations, its condition. */}}
{{- define "nodecreds.celKept" -}}
n.manager == o.manager && n.operation == o.operation &&
n.?subresource.orValue('') == o.?subresource.orValue('') && n.?apiVersion.orValue('') == o.?apiVersion.orValue('') &&
n.?time == o.?time && n.?fieldsType == o.?fieldsType &&
n.fieldsV1.all(k, k in o.fieldsV1) &&
o.fieldsV1.all(k, k == 'f:spec' ? (
o.fieldsV1[k].all(j, (j == 'f:taints' && variables.taintsChanged) || n.fieldsV1[?k].orValue({})[?j] == o.fieldsV1[k][?j]) &&
n.fieldsV1[?k].orValue({}).all(j, j in o.fieldsV1[k] && n.fieldsV1[k][j] == o.fieldsV1[k][j])
) : k == 'f:metadata' ? (
o.fieldsV1[k].all(j, j == 'f:annotations' ?
o.fieldsV1[k][j].all(a, a in variables.ourAnnotationFields || n.fieldsV1[?k].orValue({})[?j].orValue({})[?a] == o.fieldsV1[k][j][?a]) :
n.fieldsV1[?k].orValue({})[?j] == o.fieldsV1[k][?j]) &&
n.fieldsV1[?k].orValue({}).all(j, j in o.fieldsV1[k] && (j == 'f:annotations' ?
n.fieldsV1[k][j].all(a, a in o.fieldsV1[k][j] && n.fieldsV1[k][j][a] == o.fieldsV1[k][j][a]) : n.fieldsV1[k][j] == o.fieldsV1[k][j]))
) : k == 'f:status' ? (
o.fieldsV1[k].all(j, j == 'f:conditions' ?
o.fieldsV1[k][j].all(c, c == variables.conditionField || n.fieldsV1[?k].orValue({})[?j].orValue({})[?c] == o.fieldsV1[k][j][?c]) :
n.fieldsV1[?k].orValue({})[?j] == o.fieldsV1[k][?j]) &&
n.fieldsV1[?k].orValue({}).all(j, j in o.fieldsV1[k] && (j == 'f:conditions' ?
n.fieldsV1[k][j].all(c, c in o.fieldsV1[k][j] && (c == variables.conditionField ? n.fieldsV1[k][j][c].all(x, x in o.fieldsV1[k][j][c]) : n.fieldsV1[k][j][c] == o.fieldsV1[k][j][c])) :
n.fieldsV1[k][j] == o.fieldsV1[k][j]))
) : n.fieldsV1[?k] == o.fieldsV1[?k])
{{- end -}}

{{/* A CEL expression: every field path of the "ancient-changes" entry n
was owned before by an update entry of its API version (so the API
server's merge of the oldest entries into it moves ownership, never makes
it up). Arguments: list level depth; deeper paths are refused. */}}
{{- define "nodecreds.celOwnedBefore" -}}
{{- $level := index . 0 }}{{ $depth := index . 1 -}}
{{- $x := "n.fieldsV1" }}{{ range $i := until (int (sub $level 1)) }}{{ $x = printf "%s[k%d]" $x (add1 $i) }}{{ end -}}
{{- $k := printf "k%d" $level -}}
{{- $in := list -}}
{{- range $i := until (int $level) -}}
{{- $e := "e.fieldsV1" }}{{ range $j := until $i }}{{ $e = printf "%s[k%d]" $e (add1 $j) }}{{ end -}}
{{- $in = append $in (printf "k%d in %s" (add1 $i) $e) -}}
{{- end -}}
{{ $x }}.all({{ $k }}, {{ $x }}[{{ $k }}].size() == 0 ? variables.oldFields.exists(e, e.operation == 'Update' && e.?apiVersion.orValue('') == n.?apiVersion.orValue('') && {{ join " && " $in }}) : {{ if ge (int $level) (int $depth) }}false{{ else }}{{ include "nodecreds.celOwnedBefore" (list (add1 $level) $depth) }}{{ end }})
{{- end -}}
