{{/*
Names. A StatefulSet's pods are NAME-ORDINAL and Kubernetes labels each pod with NAME plus a
revision hash (at most 63 characters in all), so NAME is cut at 52 characters.
*/}}
{{- define "concord.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "concord.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "concord.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries (Helm's recommended app.kubernetes.io/* set). */}}
{{- define "concord.labels" -}}
helm.sh/chart: {{ include "concord.chart" . }}
{{ include "concord.selectorLabels" . }}
app.kubernetes.io/version: {{ include "concord.imageTag" . | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: concord
{{- end }}

{{/* Labels that select the coordinator pods: never change them after install (selectors are immutable). */}}
{{- define "concord.selectorLabels" -}}
app.kubernetes.io/name: {{ include "concord.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: coordinator
{{- end }}

{{- define "concord.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "concord.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The headless Service that names the pods NAME-I.PEERS.NAMESPACE.svc.DOMAIN. */}}
{{- define "concord.peerServiceName" -}}
{{- printf "%s-peers" (include "concord.fullname" .) }}
{{- end }}

{{- define "concord.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest pins the image. */}}
{{- define "concord.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "concord.imageTag" .) }}
{{- end }}
{{- end }}

{{/*
How many replicas form the cluster at first: cluster.initialReplicas when set; on an upgrade, the count
the release was installed with (read back from its ConfigMap), so that scaling `replicas` later changes
nothing for the running pods; else `replicas`. Offline rendering (helm template, GitOps tools) cannot
read it back: set cluster.initialReplicas there.
*/}}
{{- define "concord.initialReplicas" -}}
{{- $existing := lookup "v1" "ConfigMap" .Release.Namespace (printf "%s-env" (include "concord.fullname" .)) }}
{{- if .Values.cluster.initialReplicas }}
{{- .Values.cluster.initialReplicas | int }}
{{- else if and $existing $existing.data (hasKey $existing.data "CONCORD_INITIAL_REPLICAS") }}
{{- index $existing.data "CONCORD_INITIAL_REPLICAS" | int }}
{{- else }}
{{- .Values.replicas | int }}
{{- end }}
{{- end }}

{{/*
Voluntary evictions may take at most (n - 1) / 2 replicas at once, so a majority (the Raft quorum)
always stays up: 1 -> 0, 2 -> 0, 3 -> 1, 4 -> 1, 5 -> 2. n is the smaller of `replicas` and the
initial count: pods scaled beyond the initial members are voters only once they have joined, which
the chart cannot see, so the budget stays conservative. podDisruptionBudget.maxUnavailable overrides it
(once they have joined).
*/}}
{{- define "concord.maxUnavailable" -}}
{{- if ne .Values.podDisruptionBudget.maxUnavailable nil }}
{{- .Values.podDisruptionBudget.maxUnavailable | int }}
{{- else }}
{{- $n := min (.Values.replicas | int) (include "concord.initialReplicas" . | int) }}
{{- div (sub $n 1) 2 }}
{{- end }}
{{- end }}

{{/* Fails rendering on values that cannot work, with what to set. */}}
{{- define "concord.validate" -}}
{{- $p := .Values.attestation.platform }}
{{- if not (has $p (list "snp" "tdx" "simulated")) }}
{{- fail (printf "attestation.platform %q: use snp or tdx (production) or simulated (INSECURE, tests and demos)" $p) }}
{{- end }}
{{- if eq $p "simulated" }}
{{- $s := .Values.attestation.simulated }}
{{- if not $s.rootSecret }}{{ fail "attestation.platform=simulated needs attestation.simulated.rootSecret: a Secret made from `concord attestation sim-root --out DIR` (kubectl create secret generic NAME --from-file=DIR)" }}{{ end }}
{{- if not $s.policy }}{{ fail "attestation.platform=simulated needs attestation.simulated.policy: the coordinator's policy document, whose SHA-256 the manifest lists with role coordinator" }}{{ end }}
{{- if not (regexMatch "^[0-9a-f]{96}$" ($s.measurement | default "")) }}{{ fail "attestation.platform=simulated needs attestation.simulated.measurement: 96 lowercase hex characters" }}{{ end }}
{{- end }}
{{- if eq $p "snp" }}
{{- $snp := .Values.attestation.snp }}
{{- if not .Values.runtimeClassName }}{{ fail "attestation.platform=snp needs runtimeClassName: the RuntimeClass that runs the pods in SEV-SNP confidential VMs (e.g. kata-cc-isolation, kata-qemu-snp, or Contrast's contrast-cc class); without it the pods run outside a confidential VM and cannot attest" }}{{ end }}
{{- if not .Values.image.digest }}{{ fail "attestation.platform=snp needs image.digest (sha256:...): the manifest pins the coordinator's measurement and policy, which name one build, and a tag can be moved to another image" }}{{ end }}
{{- if not $snp.deviceAccess }}{{ fail "attestation.platform=snp needs attestation.snp.deviceAccess: how the container (uid 65532, no capability) may open /dev/sev-guest: group (with deviceGroup: a group that owns the device in the guest) or resource (with deviceResource: a device plugin's resource); see docs/OPERATIONS.md, SEV-SNP" }}{{ end }}
{{- if and (eq $snp.deviceAccess "group") (not $snp.deviceGroup) }}{{ fail "attestation.snp.deviceAccess=group needs attestation.snp.deviceGroup: the GID that owns /dev/sev-guest in the guest" }}{{ end }}
{{- if and (eq $snp.deviceAccess "resource") (not $snp.deviceResource) }}{{ fail "attestation.snp.deviceAccess=resource needs attestation.snp.deviceResource: the device plugin's extended resource for /dev/sev-guest" }}{{ end }}
{{- if and (eq $snp.deviceAccess "resource") $snp.mountDevice }}{{ fail "attestation.snp.deviceAccess=resource: the device plugin gives the container /dev/sev-guest, so attestation.snp.mountDevice must be false (a hostPath mount would hide the plugin's device)" }}{{ end }}
{{- end }}
{{- if eq $p "tdx" }}
{{- $tdx := .Values.attestation.tdx }}
{{- if not .Values.runtimeClassName }}{{ fail "attestation.platform=tdx needs runtimeClassName: the RuntimeClass that runs the pods in Intel TDX trust domains (e.g. kata-qemu-tdx, or Contrast's contrast-cc class); without it the pods run outside a trust domain and cannot attest" }}{{ end }}
{{- if not .Values.image.digest }}{{ fail "attestation.platform=tdx needs image.digest (sha256:...): the manifest pins the coordinator's MRTD and policy, which name one build, and a tag can be moved to another image" }}{{ end }}
{{- if not $tdx.reportAccess }}{{ fail "attestation.platform=tdx needs attestation.tdx.reportAccess: configfs-tsm report entries are root-owned (inblob mode 0200), so uid 65532 without capabilities cannot request a quote: root (the container runs as uid 0 in the trust domain, every capability still dropped) or runtime (your runtime makes the entries writable for uid 65532); see docs/OPERATIONS.md, Intel TDX" }}{{ end }}
{{- if and (eq $tdx.pccsUrl "off") (not $tdx.collateralConfigMap) }}{{ fail "attestation.platform=tdx with attestation.tdx.pccsUrl=off needs attestation.tdx.collateralConfigMap: the replicas would have no source of Intel's collateral (give a PCS/PCCS URL, or a ConfigMap of {FMSPC}-{processor|platform}.json files)" }}{{ end }}
{{- end }}
{{- $stale := .Values.attestation.snp.acceptStaleAmdCrlFor | default "0s" }}
{{- $staleSeconds := mul (regexFind "^[0-9]+" $stale | int64) (get (dict "s" 1 "m" 60 "h" 3600 "d" 86400) (regexFind "[smhd]$" $stale) | int64) }}
{{- if gt $staleSeconds 2592000 }}
{{- fail (printf "attestation.snp.acceptStaleAmdCrlFor %q: at most 30d (the coordinator refuses more); a CRL stale for longer means AMD's KDS is unreachable: fix that, or put a fresh CRL into attestation.snp.vcekConfigMap" $stale) }}
{{- end }}
{{- if and .Values.networkPolicy.enabled (not .Values.networkPolicy.egress.dns) }}
{{- fail "networkPolicy.egress.dns is empty: the replicas could not resolve their peers' names (an empty `to` would instead admit every destination); give the DNS servers as NetworkPolicy peers" }}
{{- end }}
{{- $override := .Values.podDisruptionBudget.maxUnavailable }}
{{- if ne $override nil }}
{{- $cap := div (sub (.Values.replicas | int) 1) 2 }}
{{- if gt ($override | int) $cap }}
{{- fail (printf "podDisruptionBudget.maxUnavailable %d would let evictions break the Raft quorum: with %d replicas at most %d (that is (replicas - 1) / 2, once every replica votes). Lower it before shrinking the voters (docs/OPERATIONS.md, Scaling)" ($override | int) (.Values.replicas | int) $cap) }}
{{- end }}
{{- end }}
{{- if not (has .Values.podAntiAffinity (list "soft" "hard" "none")) }}
{{- fail (printf "podAntiAffinity %q: use soft, hard or none" .Values.podAntiAffinity) }}
{{- end }}
{{- if not (has .Values.logFormat (list "json" "text")) }}
{{- fail (printf "logFormat %q: use json or text" .Values.logFormat) }}
{{- end }}
{{- if lt (.Values.replicas | int) 1 }}
{{- fail "replicas must be at least 1" }}
{{- end }}
{{- if lt (include "concord.initialReplicas" . | int) 1 }}
{{- fail "cluster.initialReplicas must be at least 1" }}
{{- end }}
{{- end }}
