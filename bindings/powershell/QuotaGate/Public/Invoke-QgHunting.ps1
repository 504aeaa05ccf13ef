<#
.SYNOPSIS
Runs an advanced hunting query and returns its rows.

.DESCRIPTION
Sends POST /api/advancedqueries/run with the KQL query through a QuotaGate client, so
that it waits for the hunting quota (45 calls per minute, 1,500 per hour), and writes
each row of the result as an object. Errors from the service (a bad query, a result
too large) are non-terminating errors with the server's code and message, so that the
next query from the pipeline still runs.

.PARAMETER Query
The KQL query. Accepts pipeline input: several queries run one after the other.

.PARAMETER AsHashtable
Write the rows as hashtables instead of objects: needed when columns differ only by
case, as "project Name, name" makes them.

.PARAMETER Client
The client to use. Default: the session's default client.

.EXAMPLE
Invoke-QgHunting -Query 'DeviceInfo | where OSPlatform == "Windows10" | take 10'

.EXAMPLE
'DeviceProcessEvents | take 5', 'DeviceNetworkEvents | take 5' | Invoke-QgHunting

.EXAMPLE
Invoke-QgHunting -Query 'DeviceInfo | project DeviceName, devicename = tolower(DeviceName)' -AsHashtable

.OUTPUTS
System.Management.Automation.PSCustomObject
#>
function Invoke-QgHunting {
    [CmdletBinding()]
    [OutputType([psobject])]
    param(
        [Parameter(Mandatory, Position = 0, ValueFromPipeline)]
        [ValidateNotNullOrEmpty()]
        [string]$Query,

        [switch]$AsHashtable,

        [QuotaGate.Interop.Client]$Client
    )
    process {
        $stop = $null
        $request = $null
        try {
            $useClient = Resolve-QgClient $Client
            $stop = [QuotaGate.Interop.StopSignal]::new($PSCmdlet)
            $request = [QuotaGate.Interop.Request]::new('POST', '/api/advancedqueries/run')
            [void]$request.SetBody((ConvertTo-Json -InputObject @{ Query = $Query } -Compress), $null)
            $response = Send-QgRequest -Client $useClient -Request $request -Stop $stop -Activity 'Advanced hunting'
            $result = ConvertFrom-QgJson $response.BodyText -AsHashtable:$AsHashtable
            $rows = if ($result -is [System.Collections.IDictionary]) {
                if ($result.Contains('Results')) { $result['Results'] }
            } elseif ($result -and $result.PSObject.Properties['Results']) {
                $result.Results
            }
            foreach ($row in $rows) {
                $row
            }
        } catch {
            Write-QgLog
            if ($PSCmdlet.Stopping -or $_.Exception -is [System.Management.Automation.PipelineStoppedException]) {
                throw
            }
            Write-QgCallError -Cmdlet $PSCmdlet -ErrorRecord $_ -Target $Query
        } finally {
            if ($stop) { $stop.Dispose() }
            if ($request) { $request.Dispose() }
            Write-QgLog
        }
    }
}
