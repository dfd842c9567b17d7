{{/* Chart name, overridable. */}}
{{- define "redeliver.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name used for every resource. The release name alone when it already contains the
chart name, so `helm install redeliver ...` gives "redeliver", not "redeliver-redeliver".
*/}}
{{- define "redeliver.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "redeliver.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "redeliver.selectorLabels" -}}
app.kubernetes.io/name: {{ include "redeliver.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "redeliver.labels" -}}
helm.sh/chart: {{ include "redeliver.chart" . }}
{{ include "redeliver.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: redeliver
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "redeliver.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "redeliver.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "redeliver.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* "true" when leader election is on: explicit value, else on with more than one replica. */}}
{{- define "redeliver.leaderElection" -}}
{{- $le := .Values.controller.leaderElection.enabled -}}
{{- if kindIs "bool" $le -}}
{{- ternary "true" "false" $le -}}
{{- else -}}
{{- ternary "true" "false" (gt (int .Values.replicaCount) 1) -}}
{{- end -}}
{{- end -}}

{{- define "redeliver.leaseName" -}}
{{- default (include "redeliver.fullname" .) .Values.controller.leaderElection.leaseName -}}
{{- end -}}

{{/* "true" when a PodDisruptionBudget is rendered: explicit value, else with more than one replica. */}}
{{- define "redeliver.pdb" -}}
{{- $pdb := .Values.podDisruptionBudget.enabled -}}
{{- if kindIs "bool" $pdb -}}
{{- ternary "true" "false" $pdb -}}
{{- else -}}
{{- ternary "true" "false" (gt (int .Values.replicaCount) 1) -}}
{{- end -}}
{{- end -}}

{{/*
Credential checks that the schema cannot express. A release with no credential at all
still renders (so the chart can be inspected and linted with its defaults); NOTES.txt
then says what is missing and the controller refuses to start with the same message.
*/}}
{{- define "redeliver.validateCredentials" -}}
{{- $g := .Values.graph -}}
{{- if and $g.existingSecret .Values.workloadIdentity.enabled -}}
{{- fail "graph.existingSecret and workloadIdentity.enabled are two credential modes; set only one" -}}
{{- end -}}
{{- if and $g.existingSecret (not $g.tenantId) -}}
{{- fail "graph.tenantId is required with graph.existingSecret (the Entra tenant id or verified domain)" -}}
{{- end -}}
{{- if and $g.existingSecret (not $g.clientId) -}}
{{- fail "graph.clientId is required with graph.existingSecret (the app registration's application id)" -}}
{{- end -}}
{{- if and .Values.workloadIdentity.enabled .Values.serviceAccount.create (not $g.clientId) -}}
{{- fail "graph.clientId is required with workloadIdentity.enabled: it becomes the ServiceAccount's azure.workload.identity/client-id annotation" -}}
{{- end -}}
{{- end -}}

{{- define "redeliver.credentialsConfigured" -}}
{{- if or .Values.graph.existingSecret .Values.workloadIdentity.enabled -}}true{{- end -}}
{{- end -}}
